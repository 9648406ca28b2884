"""One extra SFTP connection of a parallel upload (``storage_backends.sftp_parallel``), in a
process of its own so that paramiko's per-packet Python work runs beside the archiver's
download and hashing instead of under the same GIL.

Run as a script by path (``python .../sftp_worker.py``): it imports only the standard library
and paramiko (no Prefect, no project package), so it starts in a fraction of a second.

Protocol, parent -> worker on stdin, frames of ``!cQI`` (kind, offset, length) + ``length`` bytes:

* ``C``: the connection, as JSON (host, port, user, password or key, the host key the parent
  verified, window); answered ``{"ready": true}`` or ``{"error": ..., "permanent": ...}``,
  after which the worker exits (the parent uploads without it);
* ``O``: open the temp file (path in the payload) for writing, without creating or truncating
  it (the parent created it);
* ``W``: write the payload at ``offset`` (pipelined);
* ``F``: finish: close the file, which waits for the server's acknowledgement of every write;
  answered ``{"done": <bytes acknowledged>}`` or ``{"error": ...}``;
* ``Q``: quit.

Worker -> parent on stdout: one JSON object per line. After a failed write the worker keeps
reading (and dropping) data frames until ``F``, so the parent never blocks on a full pipe, and
then answers the error. Messages never contain secrets. stdin closing ends the worker.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import sys

FRAME = struct.Struct("!cQI")
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr")
MAX_SFTP_MESSAGE = 255 * 1024


def write_request_size(sftp) -> int:
    """As ``storage_backends.sftp._write_request_size``: requests filling whole SSH packets."""
    per_packet = sftp.sock.out_max_packet_size - 64
    packets = max(1, MAX_SFTP_MESSAGE // per_packet)
    return max(32 * 1024, min(packets, 4) * per_packet - 64)


def _load_key(paramiko, text: str, passphrase: str | None):
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text), password=passphrase)
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    raise ValueError("the private key cannot be read")


def connect(conf: dict):
    """An authenticated SFTP session, or an exception (message free of secrets)."""
    import paramiko

    sock = socket.create_connection((conf["host"], conf["port"]), timeout=conf["connect_timeout"])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock, default_window_size=conf["window"], default_max_packet_size=conf["max_packet"])
    try:
        opts = transport.get_security_options()
        opts.ciphers = [c for c in PREFERRED_CIPHERS if c in opts.ciphers] + [c for c in opts.ciphers if c not in PREFERRED_CIPHERS]
        if conf["host_key_type"] in opts.key_types:
            opts.key_types = [conf["host_key_type"]]
        transport.start_client(timeout=conf["connect_timeout"])
        key = transport.get_remote_server_key()
        if key.get_name() != conf["host_key_type"] or key.get_base64() != conf["host_key"]:
            raise PermissionError("the server's host key differs from the one the archiver verified")
        if conf.get("key_text"):
            transport.auth_publickey(conf["user"], _load_key(paramiko, conf["key_text"], conf.get("password")))
        else:
            transport.auth_password(conf["user"], conf["password"])
        sftp = paramiko.SFTPClient.from_transport(transport, window_size=conf["window"], max_packet_size=conf["max_packet"])
        sftp.get_channel().settimeout(conf["stall_seconds"])
        return transport, sftp
    except BaseException:
        transport.close()
        raise


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Worker:
    def __init__(self, stdin, stdout) -> None:
        self.stdin, self.stdout = stdin, stdout
        self.transport = self.sftp = self.file = None
        self.written = 0
        self.error: str | None = None

    def say(self, **message) -> None:
        self.stdout.write(json.dumps(message).encode() + b"\n")
        self.stdout.flush()

    def read_exactly(self, n: int) -> bytes:
        data = self.stdin.read(n)
        if len(data) != n:
            raise EOFError
        return data

    def run(self) -> None:
        while True:
            try:
                kind, offset, length = FRAME.unpack(self.read_exactly(FRAME.size))
                payload = self.read_exactly(length) if length else b""
            except EOFError:
                return
            if kind == b"C":
                try:
                    self.transport, self.sftp = connect(json.loads(payload))
                except Exception as exc:  # noqa: BLE001 - reported; the parent goes on without us
                    permanent = type(exc).__name__ in ("AuthenticationException", "PermissionError")
                    self.say(error=f"cannot connect: {_describe(exc)}", permanent=permanent)
                    return
                self.say(ready=True)
            elif kind == b"O":
                self.written, self.error = 0, None
                try:
                    self.file = self.sftp.open(payload.decode(), "r+")  # write, no create, no truncate
                    self.file.set_pipelined(True)
                    self.file.MAX_REQUEST_SIZE = write_request_size(self.sftp)
                except Exception as exc:  # noqa: BLE001
                    self.error, self.file = f"open failed: {_describe(exc)}", None
            elif kind == b"W":
                if self.error is None and self.file is not None:
                    try:
                        self.file.seek(offset)
                        self.file.write(payload)
                        self.written += length
                    except Exception as exc:  # noqa: BLE001 - answered at F
                        self.error = f"write at byte {offset} failed: {_describe(exc)}"
            elif kind == b"F":
                if self.file is not None:
                    try:
                        self.file.close()  # waits for every pipelined write's status
                    except Exception as exc:  # noqa: BLE001
                        if self.error is None:
                            self.error = f"closing the file failed: {_describe(exc)}"
                    self.file = None
                if self.error is not None:
                    self.say(error=self.error)
                else:
                    self.say(done=self.written)
                if self.transport is None or not self.transport.is_active():
                    return
            elif kind == b"Q":
                return


def main() -> int:
    worker = Worker(sys.stdin.buffer, sys.stdout.buffer)
    try:
        worker.run()
    finally:
        if worker.transport is not None:
            worker.transport.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
