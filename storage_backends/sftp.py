"""SFTP backend (paramiko), with the API's own auth semantics.

* ``auth_method`` PASSWORD: ``SFTP_PASSWORD`` is the login password.
  ``auth_method`` KEY: the key from ``SFTP_PRIVATE_KEY`` (text) or ``SFTP_PRIVATE_KEY_FILE``
  (OpenSSH or PEM; Ed25519, ECDSA or RSA; detected), ``SFTP_PASSWORD`` its passphrase.
  A ``SFTPCredentials`` block named ``rtk-sftp-<user>-at-<host>`` wins over the environment.
* Host keys are verified against ``SFTP_KNOWN_HOSTS`` (default ``~/.ssh/known_hosts``) and
  the block's ``known_hosts``; an unknown or changed key is refused. Trusting an unknown
  host (and recording its key) needs ``SFTP_TRUST_UNKNOWN_HOSTS=true``.
* Uploads go to a hidden temporary name in the target directory with pipelined writes over
  a large SSH window, are size-checked, then renamed into place (``posix-rename``); the
  temporary file is removed on any failure. A temp file left by a killed upload is removed on
  a process's first upload into its directory (then at most every ``SWEEP_SECONDS``) when its
  writer is provably gone (``_abandoned``); listing the directory on every upload cost
  O(files in it) round trips per upload.
* ``ARCHIVE_SFTP_CONNECTIONS`` > 1: an upload of ``PARALLEL_MIN_BYTES`` or more also writes
  over extra connections in worker processes, disjoint ranges of the same temp file
  (``sftp_parallel.py``); the size check and the rename are the same.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import socket
import threading
import stat as stat_mod
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko

from rtk_archiver.models import ObjectInfo

from .base import KeyTaken, PermanentStorageError, Readable, StorageBackend, StorageError
from .credentials import block_name_for, load_block
from .destination import Destination
from .nofollow import NotOurs, link_refused
from .sftp_parallel import PARALLEL_MIN_BYTES, ParallelUpload, WriterPool
from .sftp_stream import WriteStream
from .sftp_stream import supported as stream_supported
from .tempnames import SWEEPS, TEMP_MARKER, pid_alive, temp_prefix, temp_writer

if TYPE_CHECKING:
    from rtk_archiver.settings import Settings

WINDOW_SIZE = 64 * 1024 * 1024  # large SSH window: writes rarely wait for window adjusts (ARCHIVE_SFTP_WINDOW_SIZE)
MAX_PACKET_SIZE = 256 * 1024
WRITE_CHUNK = 1024 * 1024  # paramiko splits each write into SFTP requests, pipelined
WRITE_CHUNK_MAX = 16 * 1024 * 1024  # a chunk handed over whole (read1) up to this size
# OpenSSH's sftp-server takes messages up to 256 KiB; paramiko defaults to 32 KiB requests.
MAX_SFTP_MESSAGE = 255 * 1024
CONNECT_TIMEOUT = 20.0
#: a temp file written from another host is abandoned once untouched for this long (a live
#: upload writes continuously, or fails within ARCHIVE_UPLOAD_STALL_SECONDS)
CROSS_HOST_ABANDONED_SECONDS = 6 * 3600
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr")
KEY_CLASSES = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


def _host_tag() -> str:
    """This machine (and boot) and PID namespace, as it appears in temp names: pids are only
    meaningful there. Two containers on one host can share the hostname and the boot id (host
    networking) but not their pids: a writer in another PID namespace counts as another host's
    (its temp file is left until untouched for CROSS_HOST_ABANDONED_SECONDS)."""
    parts = [socket.gethostname()]
    for source in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                   lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(source())
        except OSError:
            parts.append("")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]


_HOST_TAG = _host_tag()
_LIVE: set[str] = set()  # temp names of this process's uploads in progress
_LIVE_LOCK = threading.Lock()


def _writer_tag() -> str:
    return f"{_HOST_TAG}-{os.getpid()}"


#: the writer part of this backend's temp names: ``<host tag>-<pid>-<random>`` (``put``)
SFTP_WRITER = re.compile(r"[0-9a-f]{10}-[0-9]+-[0-9a-f]{8}")


def _abandoned(name: str, mtime: float, server_now: float) -> bool:
    """Whether a temp file's writer is provably gone. A temp name is
    ``<prefix><host>-<pid>-<random>``; from another host (or an unknown writer part), it is
    gone once the file has not changed for CROSS_HOST_ABANDONED_SECONDS."""
    writer = temp_writer(name, SFTP_WRITER)
    if writer is None:
        return False  # not a temp name this archiver writes: never touched
    parts = writer.split("-")
    if len(parts) == 3 and parts[0] == _HOST_TAG and parts[1].isdigit():
        pid = int(parts[1])
        if pid == os.getpid():
            with _LIVE_LOCK:
                return name not in _LIVE
        return not pid_alive(pid)
    return server_now - mtime > CROSS_HOST_ABANDONED_SECONDS


def __getattr__(name: str) -> Any:
    if name == "SFTPCredentials":  # the block, in storage_backends.blocks (it imports Prefect)
        from .blocks import SFTPCredentials

        return SFTPCredentials
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_private_key(text: str, passphrase: str | None) -> paramiko.PKey:
    """An Ed25519, ECDSA or RSA key from OpenSSH or PEM text, whichever it is."""
    encrypted = False
    for cls in KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text), password=passphrase)
        except paramiko.PasswordRequiredException:
            encrypted = True
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    if encrypted and not passphrase:
        raise PermanentStorageError("the SFTP private key is encrypted: set SFTP_PASSWORD to its passphrase")
    raise PermanentStorageError(
        "the SFTP private key cannot be read: not an Ed25519/ECDSA/RSA key in OpenSSH or PEM format, "
        "or the passphrase (SFTP_PASSWORD) is wrong"
    )


def _at_once(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``fn`` of each item, all at once, each in a thread of its own (SFTP requests of several
    channels: a round trip each, waited for together); [] for no items."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(len(items), thread_name_prefix="rtk-sftp-channel") as pool:
        return list(pool.map(fn, items))


def _write_request_size(sftp: paramiko.SFTPClient) -> int:
    """Fewer, larger write requests, sized so a request and its header fill whole SSH packets
    (paramiko sends at most max_packet - 64 bytes per packet): with OpenSSH's 32 KiB channel
    packets, 4 full packets and no tiny trailing one. Measured: ~1.6x the default 32 KiB."""
    per_packet = sftp.sock.out_max_packet_size - 64
    packets = max(1, MAX_SFTP_MESSAGE // per_packet)
    return max(32 * 1024, min(packets, 4) * per_packet - 64)


class SFTPBackend(StorageBackend):
    def __init__(self, destination: Destination, settings: "Settings") -> None:
        super().__init__(destination)
        self.settings = settings
        self.block = load_block("SFTPCredentials", destination, settings.archive_credential_blocks)
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._channels: list[paramiko.SFTPClient] = []  # more SFTP channels of the connection (ARCHIVE_SFTP_CHANNELS)
        self._channels_refused = False
        self._root = ""
        self._made: set[str] = set()
        #: directories below the root seen (lstat) to be real directories, not links
        self._real_dirs: set[str] = set()
        self._pool: WriterPool | None = None  # extra upload connections (sftp_parallel), on first use
        self.last_upload_connections = 1  # connections the last put wrote over (tests, logs)
        self.last_upload_channels = 1  # SFTP channels the last put wrote over (tests, logs)

    # -- connection ------------------------------------------------------------------------
    @property
    def where(self) -> str:
        d = self.destination
        return f"{d.username}@{d.host}:{22 if d.port is None else d.port}"

    def _host_key_name(self) -> str:
        port = 22 if self.destination.port is None else self.destination.port
        return self.destination.host if port == 22 else f"[{self.destination.host}]:{port}"

    def _known_hosts(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        path = Path(self.settings.sftp_known_hosts).expanduser()
        if path.is_file():
            keys.load(str(path))
        if self.block is not None and self.block.known_hosts:
            for line in self.block.known_hosts.splitlines():
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
                if entry is not None:
                    for name in entry.hostnames:
                        keys.add(name, entry.key.get_name(), entry.key)
        return keys

    def _verify_host_key(self, known: paramiko.HostKeys, server_key: paramiko.PKey) -> None:
        name = self._host_key_name()
        entry = known.lookup(name)
        if entry is None:
            if not self.settings.sftp_trust_unknown_hosts:
                port = 22 if self.destination.port is None else self.destination.port
                raise PermanentStorageError(
                    f"the host key of {name} is unknown: add it to {self.settings.sftp_known_hosts} "
                    f"(ssh-keyscan -p {port} {self.destination.host} >> {self.settings.sftp_known_hosts}) after "
                    "checking its fingerprint, or set SFTP_TRUST_UNKNOWN_HOSTS=true to accept unknown hosts"
                )
            path = Path(self.settings.sftp_known_hosts).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write(f"{name} {server_key.get_name()} {server_key.get_base64()}\n")
            return
        known_key = entry.get(server_key.get_name())
        if known_key is None or known_key != server_key:
            raise PermanentStorageError(
                f"the host key of {name} has CHANGED (or is of a type not in known_hosts): refusing to connect. "
                "If the server's key really changed, update known_hosts after checking its fingerprint"
            )

    def _credentials(self) -> tuple[str | None, str | None]:
        """(password, private key text) from the block, else the environment."""
        block = self.block
        password = block.password if block and block.password else self.settings.sftp_password
        key_text = block.private_key if block and block.private_key else self.settings.sftp_private_key
        pw = password.get_secret_value() if password else None
        text = key_text.get_secret_value() if key_text else None
        if text is None and self.settings.sftp_private_key_file and not (block and block.private_key):
            try:
                text = Path(self.settings.sftp_private_key_file).expanduser().read_text()
            except OSError as exc:
                raise PermanentStorageError(f"cannot read SFTP_PRIVATE_KEY_FILE: {exc.strerror}") from None
        return pw, text

    def _authenticate(self, transport: paramiko.Transport) -> None:
        password, key_text = self._credentials()
        user = self.destination.username
        method = self.destination.auth_method or ("KEY" if key_text else "PASSWORD")
        if method == "PASSWORD":
            if not password:
                raise PermanentStorageError(
                    f"no password for {self.where} (auth_method PASSWORD): set SFTP_PASSWORD or the "
                    f"'{block_name_for(self.destination)}' block"
                )
            transport.auth_password(user, password)
        else:
            if not key_text:
                raise PermanentStorageError(
                    f"no private key for {self.where} (auth_method KEY): set SFTP_PRIVATE_KEY or "
                    f"SFTP_PRIVATE_KEY_FILE, or the '{block_name_for(self.destination)}' block"
                )
            transport.auth_publickey(user, load_private_key(key_text, password))

    def _connect(self) -> paramiko.SFTPClient:
        if self._sftp is not None and self._transport is not None and self._transport.is_active():
            return self._sftp
        self.close()
        d = self.destination
        known = self._known_hosts()
        try:
            sock = socket.create_connection((d.host, 22 if d.port is None else d.port), timeout=CONNECT_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = paramiko.Transport(sock, default_window_size=self.settings.archive_sftp_window_size, default_max_packet_size=MAX_PACKET_SIZE)
            opts = transport.get_security_options()
            # AEAD ciphers first: one pass through the cipher per packet instead of cipher + HMAC
            opts.ciphers = [c for c in PREFERRED_CIPHERS if c in opts.ciphers] + [c for c in opts.ciphers if c not in PREFERRED_CIPHERS]
            entry = known.lookup(self._host_key_name())
            if entry:  # negotiate a host key type we know, as OpenSSH does
                opts.key_types = [t for t in opts.key_types if t in entry.keys()] or opts.key_types
            transport.start_client(timeout=CONNECT_TIMEOUT)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise StorageError(f"cannot connect to SFTP server {self.where}: {type(exc).__name__}: {exc}") from None
        self._transport = transport
        try:
            self._verify_host_key(known, transport.get_remote_server_key())
            self._authenticate(transport)
        except paramiko.AuthenticationException:
            self.close()
            raise PermanentStorageError(
                f"SFTP authentication failed for {self.where} ({d.auth_method or 'PASSWORD'})"
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise StorageError(f"SFTP session with {self.where} failed: {type(exc).__name__}") from None
        except BaseException:
            self.close()
            raise
        self._sftp = paramiko.SFTPClient.from_transport(transport, window_size=self.settings.archive_sftp_window_size, max_packet_size=MAX_PACKET_SIZE)
        # an upload (or any request) that makes no progress for this long fails
        self._sftp.get_channel().settimeout(self.settings.archive_upload_stall_seconds)
        root = d.root
        self._root = posixpath.normpath(root if root.startswith("/") else posixpath.join(self._sftp.normalize("."), root))
        return self._sftp

    def _extra_channels(self, size: int | None) -> list[paramiko.SFTPClient]:
        """The SFTP channels besides the first that an upload of ``size`` bytes also writes over
        (``ARCHIVE_SFTP_CHANNELS`` - 1, for ``PARALLEL_MIN_BYTES`` or more), opened once per
        connection, all at once (each takes 3 round trips); a server that refuses one
        (OpenSSH's ``MaxSessions``) leaves fewer."""
        want = self.settings.archive_sftp_channels - 1
        if want < 1 or size is None or size < PARALLEL_MIN_BYTES or self._transport is None:
            return []
        missing = want - len(self._channels)
        if missing > 0 and not self._channels_refused:
            opened = _at_once(lambda _: self._open_channel(), range(missing))
            self._channels += [c for c in opened if c is not None]
            self._channels_refused = None in opened
        return self._channels[:want]

    def _open_channel(self) -> paramiko.SFTPClient | None:
        transport = self._transport
        try:
            extra = paramiko.SFTPClient.from_transport(
                transport, window_size=self.settings.archive_sftp_window_size, max_packet_size=MAX_PACKET_SIZE)
        except (paramiko.SSHException, OSError, EOFError, AttributeError):
            return None
        if extra is not None:
            extra.get_channel().settimeout(self.settings.archive_upload_stall_seconds)
        return extra

    def _open_on_extra_channels(self, tmp: str, channels: list[paramiko.SFTPClient]) -> list[tuple[paramiko.SFTPClient, paramiko.SFTPFile]]:
        """Handles on the temp file (created by the first channel) on each extra channel, opened
        all at once, not truncating it; a channel on which the server refuses one is left out."""
        def open_on(extra: paramiko.SFTPClient) -> tuple[paramiko.SFTPClient, paramiko.SFTPFile] | None:
            try:
                return extra, extra.open(tmp, "r+")
            except (OSError, paramiko.SSHException, EOFError):  # a server limiting open files
                return None

        return [pair for pair in _at_once(open_on, channels) if pair is not None]

    def _close_on_extra_channels(self, handles: list[tuple[paramiko.SFTPClient, paramiko.SFTPFile]]) -> None:
        """Close the extra channels' handles all at once (a round trip each); raise the first
        failure after trying them all."""

        def close(handle: paramiko.SFTPFile) -> BaseException | None:
            try:
                handle.close()
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                return exc
            return None

        failures = [f for f in _at_once(close, [h for _, h in handles]) if f is not None]
        if failures:
            raise failures[0]

    def _writer_pool(self, size: int | None) -> WriterPool | None:
        """The extra upload connections for a put of ``size`` bytes, if it should use them:
        a known size of at least ``PARALLEL_MIN_BYTES`` and ``ARCHIVE_SFTP_CONNECTIONS`` > 1."""
        extra = self.settings.archive_sftp_connections - 1
        if size is None or size < PARALLEL_MIN_BYTES or extra < 1 or self._transport is None:
            return None
        if self._pool is None:
            password, key_text = self._credentials()
            method = self.destination.auth_method or ("KEY" if key_text else "PASSWORD")
            key = self._transport.get_remote_server_key()
            d = self.destination
            conf = {
                "host": d.host, "port": 22 if d.port is None else d.port, "user": d.username,
                "password": password, "key_text": key_text if method != "PASSWORD" else None,
                "host_key_type": key.get_name(), "host_key": key.get_base64(),
                "window": self.settings.archive_sftp_window_size, "max_packet": MAX_PACKET_SIZE,
                "stall_seconds": self.settings.archive_upload_stall_seconds, "connect_timeout": CONNECT_TIMEOUT,
            }
            self._pool = WriterPool(conf, extra, self.where)
        if self._pool.refused is not None:
            return None
        self._pool.start()
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for closable in (*self._channels, self._sftp, self._transport):
            if closable is not None:
                try:
                    closable.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
        self._sftp = None
        self._transport = None
        self._channels = []
        self._channels_refused = False

    # -- paths ---------------------------------------------------------------------------------
    # No link below the root is followed: every directory of a key below the root is lstat'ed
    # (once per backend) and a link refused (``NotOurs``), and so is the file itself before it is
    # read, stat'ed, replaced or removed. SFTP has no open relative to a directory handle nor
    # O_NOFOLLOW, so a link that appears between that look and the request is followed by the
    # server (RELIABILITY.md, known limits); a rename never follows one (it replaces the name).
    def _parts(self, key: str) -> list[str]:
        parts = [p for p in key.split("/") if p not in ("", ".")]
        if ".." in parts or not parts:
            raise PermanentStorageError(f"refusing to write outside {self.destination.root} on {self.where}: {key!r}")
        return parts

    def _path(self, key: str) -> str:
        self._connect()
        return posixpath.join(self._root, *self._parts(key))

    def _dirs_real(self, key: str) -> bool:
        """Every directory of ``key`` below the root is a real directory (a link raises
        ``NotOurs``); False when one is missing or a file (nothing can be at key)."""
        self._connect()
        path = self._root
        for part in self._parts(key)[:-1]:
            path = posixpath.join(path, part)
            if path in self._real_dirs:
                continue
            attrs = self._lstat(path)  # a link: NotOurs
            if attrs is None or not stat_mod.S_ISDIR(attrs.st_mode or 0):
                return False
            self._real_dirs.add(path)
        return True

    def _lstat(self, path: str) -> paramiko.SFTPAttributes | None:
        """The entry at ``path`` itself (None: absent); a link raises ``NotOurs``."""
        try:
            attrs = self._connect().lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._os_error(exc, "stat", path) from None
        except (paramiko.SSHException, EOFError):
            raise self._lost("checking", path) from None
        if stat_mod.S_ISLNK(attrs.st_mode or 0):
            raise link_refused(f"{path} on {self.where}")
        return attrs

    def _regular_file(self, key: str) -> str | None:
        """The path of the regular file at key, looked at without following a link (None: absent)."""
        path = self._path(key)
        if not self._dirs_real(key):
            return None
        attrs = self._lstat(path)
        if attrs is None:
            return None
        mode = attrs.st_mode or 0
        if stat_mod.S_ISDIR(mode):
            raise PermanentStorageError(f"cannot read {path} on {self.where}: is a directory")
        if not stat_mod.S_ISREG(mode):
            raise NotOurs(f"{path} on {self.where} is not a regular file (a FIFO, socket or device): not the archiver's; not read")
        return path

    def _makedirs(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        """``directory`` and its parents made. The root and above may be links (the configured
        path); below the root, each is lstat'ed and a link refused."""
        if directory in self._made or directory in ("", "/"):
            return
        below = directory != self._root and directory.startswith(self._root.rstrip("/") + "/")
        try:
            attrs = sftp.lstat(directory) if below else sftp.stat(directory)
            if below and stat_mod.S_ISLNK(attrs.st_mode or 0):
                raise link_refused(f"{directory} on {self.where}")
            if stat_mod.S_ISDIR(attrs.st_mode or 0):
                self._made.add(directory)
                if below:
                    self._real_dirs.add(directory)
                return
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._os_error(exc, "create directory", directory) from None
        self._makedirs(sftp, posixpath.dirname(directory))
        try:
            sftp.mkdir(directory)
        except OSError:
            # created meanwhile by a concurrent run, or a real problem: lstat tells which
            try:
                attrs = sftp.lstat(directory) if below else sftp.stat(directory)
            except OSError:
                raise PermanentStorageError(f"cannot create directory {directory} on {self.where}") from None
            if below and stat_mod.S_ISLNK(attrs.st_mode or 0):
                raise link_refused(f"{directory} on {self.where}") from None
            if not stat_mod.S_ISDIR(attrs.st_mode or 0):
                raise PermanentStorageError(f"cannot create directory {directory} on {self.where}: a file is in the way") from None
        self._made.add(directory)
        if below:
            self._real_dirs.add(directory)

    def _os_error(self, exc: OSError, action: str, path: str) -> StorageError:
        if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == 13:
            return PermanentStorageError(f"permission denied to {action} {path} on {self.where}")
        return StorageError(f"SFTP {action} of {path} on {self.where} failed: {type(exc).__name__}: {exc}")

    def _lost(self, doing: str, path: str) -> StorageError:
        """The connection died (reset, closed, stalled): dropped here, so that the next use (a
        retry) connects again instead of finding a dead one that still looks alive."""
        self.close()
        return StorageError(f"SFTP connection to {self.where} lost while {doing} {path}")

    # -- the interface -------------------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not self._dirs_real(key):
            return None
        attrs = self._lstat(path)  # a link: NotOurs, never its target's size
        return None if attrs is None else ObjectInfo(size=int(attrs.st_size or 0))

    def put(
        self, key: str, source: Readable, size: int | None, *, replace: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        final = self._path(key)
        sftp = self._connect()
        directory, name = posixpath.split(final)
        self._makedirs(sftp, directory)
        if self.stat(key) is not None and not replace:  # a link there: NotOurs, even for the recording's own key
            raise KeyTaken(f"{final} on {self.where} already exists and was not written by this recording's archive: left untouched")
        prefix = temp_prefix(name)
        tmp = posixpath.join(directory, f"{prefix}{_writer_tag()}-{uuid.uuid4().hex[:8]}")
        reading = False
        upload: ParallelUpload | None = None
        extras: list[tuple[paramiko.SFTPClient, paramiko.SFTPFile]] = []  # more channels' handles on the temp file
        with _LIVE_LOCK:
            _LIVE.add(posixpath.basename(tmp))
        try:
            with sftp.open(tmp, "wb") as remote:
                server_now = remote.stat().st_mtime or 0
                where = self._swept(directory)
                SWEEPS.remove_left(where, lambda name: self._remove_quietly(posixpath.join(directory, name)))
                if SWEEPS.due(where):
                    self._remove_abandoned(sftp, directory, server_now)
                remote.set_pipelined(True)
                remote.MAX_REQUEST_SIZE = _write_request_size(sftp)
                pool = self._writer_pool(size)
                self.last_upload_connections = 1
                stream: WriteStream | None = None
                self.last_upload_channels = 1
                if pool is not None:
                    upload = ParallelUpload(pool, tmp, remote, self.settings.archive_upload_stall_seconds)
                elif stream_supported(sftp):
                    extras = self._open_on_extra_channels(tmp, self._extra_channels(size))
                    stream = WriteStream(sftp, remote, extras)
                    self.last_upload_channels = len(extras) + 1
                offset = 0
                # the chunks as downloaded when the source can hand them over uncut (VerifyingReader)
                whole = getattr(source, "read1", None) if stream is not None else None
                read, read_size = (whole, WRITE_CHUNK_MAX) if whole is not None else (source.read, WRITE_CHUNK)
                while True:
                    reading = True  # the source's own errors propagate as they are
                    chunk = read(read_size)
                    reading = False
                    if not chunk:
                        break
                    if upload is not None:
                        upload.write(offset, chunk)
                    elif stream is not None:
                        stream.write(chunk)
                    else:
                        remote.write(chunk)
                    offset += len(chunk)
                if stream is not None:  # every write's status read and checked
                    acknowledged = stream.finish()
                    if acknowledged != offset:
                        raise StorageError(f"{tmp} on {self.where}: {acknowledged} of {offset} bytes acknowledged by the server")
                    closing, extras = extras, []
                    self._close_on_extra_channels(closing)  # a failing close fails the put
                if upload is not None:
                    acknowledged = upload.finish()
                    self.last_upload_connections = 1 + len(upload.active) if upload.local_bytes else len(upload.active)
                    upload = None
                    if acknowledged != offset:
                        raise StorageError(f"{tmp} on {self.where}: {acknowledged} of {offset} bytes acknowledged by the server")
            written = sftp.stat(tmp).st_size
            if size is not None and written != size:
                raise StorageError(f"{tmp} on {self.where} holds {written} bytes after upload, expected {size}")
            if replace:
                self._lstat(final)  # a link that appeared meanwhile is refused, not replaced
                sftp.posix_rename(tmp, final)
            else:
                self._rename_no_clobber(sftp, tmp, final)
        except BaseException as exc:
            if upload is not None:  # the workers' writes settled (or the workers stopped) first
                upload.abort()
            try:
                self._close_on_extra_channels(extras)
            except Exception:  # noqa: BLE001 - a broken connection: the original error matters
                pass
            if not self._remove_quietly(tmp):  # the connection is gone: the next upload here removes it
                SWEEPS.left_behind(self._swept(directory), posixpath.basename(tmp))
            if isinstance(exc, TimeoutError) and not reading:  # a stalled connection: the next use connects again
                self.close()
            if isinstance(exc, OSError) and not reading:  # permission denied, disk full, timeouts
                raise self._os_error(exc, "upload", final) from None
            if isinstance(exc, (paramiko.SSHException, EOFError)) and not reading:
                raise self._lost("uploading", final) from None
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(posixpath.basename(tmp))
        return ObjectInfo(size=written)

    def _rename_no_clobber(self, sftp: paramiko.SFTPClient, tmp: str, final: str) -> None:
        """SSH_FXP_RENAME, which OpenSSH's sftp-server carries out as link + unlink: it fails
        when anything is at ``final`` (unlike ``posix-rename``, which replaces)."""
        try:
            sftp.rename(tmp, final)
        except OSError:
            try:
                sftp.lstat(final)
            except OSError:
                raise  # not a clash: the original error
            raise KeyTaken(
                f"{final} on {self.where} appeared while uploading and was not written by this recording's archive: "
                "left untouched"
            ) from None

    def remove_abandoned(self, key: str) -> None:
        sftp = self._connect()
        directory = posixpath.dirname(self._path(key))
        try:
            if not self._dirs_real(key):
                return  # no directory yet: nothing in it
            # the server's clock, at most: another host's temp file is only ever taken for older
            # than it is (put() reads the clock from the file it creates)
            server_now = sftp.stat(directory).st_mtime or 0
        except (OSError, StorageError):
            return  # no directory yet (or a link: never entered)
        SWEEPS.mark(self._swept(directory))
        self._remove_abandoned(sftp, directory, server_now)

    def _swept(self, directory: str) -> tuple[str, str, str]:
        """``directory`` of this server in this process's record of sweeps (``tempnames.SWEEPS``)."""
        return ("sftp", self.where, directory)

    def _remove_abandoned(self, sftp: paramiko.SFTPClient, directory: str, server_now: float) -> None:
        """Temp files in ``directory`` whose writer is provably gone: written from this host
        by a process that no longer exists (or by this process, in an upload that is over);
        from another host, untouched for ``CROSS_HOST_ABANDONED_SECONDS`` of the server's time.
        A live upload is never touched."""
        try:
            entries = [  # regular files only: the archiver never writes a link or a FIFO
                e for e in sftp.listdir_attr(directory)
                if temp_writer(e.filename, SFTP_WRITER) is not None and stat_mod.S_ISREG(e.st_mode or 0)
            ]
        except OSError:
            return
        for entry in entries:
            if _abandoned(entry.filename, entry.st_mtime or 0, server_now):
                self._remove_quietly(posixpath.join(directory, entry.filename))

    def _remove_quietly(self, path: str) -> bool:
        """Remove ``path`` if the connection still works; whether it is gone."""
        try:
            if self._sftp is not None and self._transport is not None and self._transport.is_active():
                self._sftp.remove(path)
                return True
        except FileNotFoundError:
            return True
        except Exception:  # noqa: BLE001 - the original error matters more; a rerun cleans up
            pass
        return False

    def read_bytes(self, key: str, limit: int = 1 << 20) -> bytes | None:
        path = self._regular_file(key)
        if path is None:
            return None
        try:
            with self._connect().open(path, "rb") as fh:
                return fh.read(limit)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._os_error(exc, "read", path) from None
        except (paramiko.SSHException, EOFError):
            raise self._lost("reading", path) from None

    def connect(self) -> None:
        self._connect()

    def missing_dirs(self, key: str) -> list[str]:
        self._connect()
        parts = self._parts(key)[:-1]
        for n in range(1, len(parts) + 1):
            attrs = self._lstat(posixpath.join(self._root, *parts[:n]))  # a link: NotOurs
            if attrs is None:
                return ["/".join(parts[:m]) for m in range(len(parts), n - 1, -1)]
        return []

    def remove_empty_dir(self, directory: str) -> None:
        path = posixpath.join(self._root, *self._parts(directory))
        attrs = self._lstat(path)
        if attrs is None or not stat_mod.S_ISDIR(attrs.st_mode or 0):
            return
        self._made.discard(path)
        self._real_dirs.discard(path)
        try:
            self._connect().rmdir(path)
        except OSError:
            pass  # not empty (something else is there now), or gone
        except (paramiko.SSHException, EOFError):
            raise self._lost("removing", path) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        if not self._dirs_real(key) or self._lstat(path) is None:  # a link: NotOurs, never removed
            return
        try:
            self._connect().remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._os_error(exc, "delete", path) from None
        except (paramiko.SSHException, EOFError):
            raise self._lost("deleting", path) from None

    def list(self, prefix: str = "") -> Iterator[tuple[str, ObjectInfo]]:
        """Regular files under ``prefix``, in key order (as S3 and GCS list), one directory in
        memory at a time; symlinks and temp files are left out."""
        directory = prefix.rpartition("/")[0]
        if not directory:
            self._connect()
            yield from self._walk(self._root, "", prefix)
            return
        try:
            if not self._dirs_real(directory + "/x"):
                return
            if self._lstat(self._path(directory)) is None:
                return
        except NotOurs:
            return  # a linked directory: nothing of ours under it
        yield from self._walk(self._path(directory), f"{directory}/", prefix)

    def _walk(self, path: str, rel: str, prefix: str) -> Iterator[tuple[str, ObjectInfo]]:
        try:
            attrs = self._connect().listdir_attr(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._os_error(exc, "list", path) from None
        except (paramiko.SSHException, EOFError):
            raise self._lost("listing", path) from None

        def is_dir(a: paramiko.SFTPAttributes) -> bool:
            return stat_mod.S_ISDIR(a.st_mode or 0)

        for a in sorted(attrs, key=lambda a: a.filename + "/" if is_dir(a) else a.filename):
            key = rel + a.filename
            if is_dir(a):  # the listing's attributes are the entry's own (lstat): a link is not a directory
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    yield from self._walk(posixpath.join(path, a.filename), key + "/", prefix)
            elif stat_mod.S_ISREG(a.st_mode or 0) and TEMP_MARKER not in a.filename and key.startswith(prefix):
                yield key, ObjectInfo(size=int(a.st_size or 0))

    def read_chunks(self, key: str, chunk_size: int = WRITE_CHUNK) -> Iterator[bytes]:
        """The object's content, streamed with pipelined reads of ``chunk_size`` at a time
        (the scrub's ``--deep`` re-hash); memory: one chunk. A link is never read through."""
        path = self._regular_file(key)
        if path is None:
            raise StorageError(f"cannot read {self._path(key)} on {self.where}: gone")
        request = 32 * 1024
        try:
            with self._connect().open(path, "rb") as fh:
                size = fh.stat().st_size or 0
                for start in range(0, size, chunk_size):
                    end = min(size, start + chunk_size)
                    spans = [(o, min(request, end - o)) for o in range(start, end, request)]
                    yield b"".join(fh.readv(spans))
        except OSError as exc:
            raise self._os_error(exc, "read", path) from None
        except (paramiko.SSHException, EOFError):
            raise self._lost("reading", path) from None
