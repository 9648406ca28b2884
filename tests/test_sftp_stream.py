"""The SFTP write path that builds its own SSH packets (storage_backends/sftp_stream.py), against a
real OpenSSH sshd: every byte stored (odd chunk sizes, empty and one-byte files, re-keying in
the middle of an upload), a refused write fails the upload, a frozen server fails it within the
stall limit and leaves nothing, and any other cipher or paramiko version writes through
paramiko's own ``SFTPFile.write``."""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid

import paramiko
import pytest

import storage_backends.sftp as sftp_mod
import storage_backends.sftp_stream as stream_mod
from rtk_archiver.streams import VerifyingReader
from storage_backends import StorageError
from storage_backends.tempnames import TEMP_MARKER

MiB = 1024 * 1024
SIZE = 6 * MiB + 54321


def content(n: int) -> bytes:
    """Bytes that differ at every 4 KiB block: a piece sent twice, dropped or misplaced shows."""
    return b"".join(i.to_bytes(8, "big") * 512 for i in range(-(-n // 4096)))[:n]


def chunks(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.fixture
def streams(monkeypatch):
    """The WriteStreams the backend makes."""
    made = []
    real = sftp_mod.WriteStream

    def counting(*args):
        made.append(real(*args))
        return made[-1]

    monkeypatch.setattr(sftp_mod, "WriteStream", counting)
    return made


def leftovers(backend) -> list[str]:
    return [p.name for p in backend.base_path.rglob("*") if TEMP_MARKER in p.name]


@pytest.mark.parametrize("size,chunk", [(SIZE, 300_001), (SIZE, 4 * MiB), (1, 1), (0, 1)], ids=["odd-chunks", "big-chunks", "1-byte", "empty"])
def test_every_byte_is_stored_through_the_stream(sftp_backend_factory, streams, size, chunk):
    backend = sftp_backend_factory("rtkecdsa")
    data = content(size)
    reader = VerifyingReader(chunks(data, chunk), size)
    assert backend.put("a/rec.mp4", reader, size).size == size
    assert len(streams) == 1 and streams[0].acknowledged == size  # every write's status read: OK
    stored = (backend.base_path / "a/rec.mp4").read_bytes()
    assert stored == data
    assert reader.hexdigests()["sha256"] == hashlib.sha256(stored).hexdigest()
    assert leftovers(backend) == []
    backend.put("a/rec.m4a", VerifyingReader(chunks(data[:1000], 7), min(size, 1000)), min(size, 1000))  # the connection goes on
    assert (backend.base_path / "a/rec.m4a").read_bytes() == data[:1000]


def test_keys_renegotiated_in_the_middle_of_uploads(sftp_backend_factory, streams, monkeypatch):
    """paramiko re-keys after REKEY_BYTES (512 MiB): the stream counts its packets and bytes
    as paramiko does, and sends nothing while the keys change."""
    monkeypatch.setattr(paramiko.packet.Packetizer, "REKEY_BYTES", MiB)
    kex = []
    real = paramiko.Transport._send_kex_init
    monkeypatch.setattr(paramiko.Transport, "_send_kex_init", lambda self: kex.append(1) or real(self))
    backend = sftp_backend_factory("rtkpass")
    data = content(SIZE)
    for name in ("one.mp4", "two.mp4"):
        backend.put(name, VerifyingReader(chunks(data, MiB), SIZE), SIZE)
        assert (backend.base_path / name).read_bytes() == data
    assert len(streams) == 2
    assert len(kex) >= 8, kex  # about one per MiB sent


def test_a_write_the_server_refuses_fails_the_stream(sftp_backend_factory):
    """Each status is checked (paramiko's pipelined writes leave unread statuses to close(),
    which drops them). A handle opened read-only: the server refuses every write."""
    backend = sftp_backend_factory("rtkpass")
    backend.put("kept.mp4", VerifyingReader(iter([b"original"]), 8), 8)
    sftp = backend._connect()
    with sftp.open(backend._path("kept.mp4"), "r") as remote:
        stream = stream_mod.WriteStream(sftp, remote)
        with pytest.raises(OSError):  # at the latest when the statuses are all read
            stream.write(content(3 * MiB))
            stream.finish()
        assert stream.acknowledged == 0
    assert (backend.base_path / "kept.mp4").read_bytes() == b"original"
    assert backend.stat("kept.mp4").size == 8  # the connection is still usable


def _server_processes_of(backend) -> list[int]:
    """The sshd processes holding the other end of the backend's connection."""
    port = backend._transport.sock.getsockname()[1]
    peer = f"0100007F:{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[2] == peer:
                inodes.add(f"socket:[{fields[9]}]")
    assert inodes, "the server side of the connection was not found"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                found.append(int(pid))
        except OSError:
            continue
    assert found, "no process holds the server side of the connection"
    return found


def test_a_frozen_server_fails_the_upload_within_the_stall_limit_and_leaves_nothing(sftp_backend_factory, streams):
    backend = sftp_backend_factory("rtkpass", archive_upload_stall_seconds=2)
    backend.stat("warm-up")
    servers = _server_processes_of(backend)
    data = content(64 * MiB)  # more than the socket buffers and the 2 MiB channel window hold

    def source():
        yield data[:MiB]
        for pid in servers:  # the server stops reading: nothing moves any more
            os.kill(pid, signal.SIGSTOP)
        for piece in chunks(data[MiB:], MiB):
            yield piece

    started = time.monotonic()
    try:
        with pytest.raises(StorageError):
            backend.put("frozen.mp4", VerifyingReader(source(), len(data)), len(data))
    finally:
        for pid in servers:
            os.kill(pid, signal.SIGKILL)
    assert time.monotonic() - started < 30
    assert len(streams) == 1
    assert not (backend.base_path / "frozen.mp4").exists()
    assert not backend._transport  # the dead connection was dropped
    # the rerun connects again; the temp file of the frozen upload is removed (its upload is over)
    backend.put("frozen.mp4", VerifyingReader(chunks(data, MiB), len(data)), len(data))
    assert (backend.base_path / "frozen.mp4").read_bytes() == data
    assert leftovers(backend) == []


def test_another_cipher_writes_through_paramiko(sftp_backend_factory, streams, monkeypatch):
    monkeypatch.setattr(sftp_mod, "PREFERRED_CIPHERS", ("aes128-ctr",))
    backend = sftp_backend_factory("rtkpass")
    data = content(2 * MiB + 3)
    backend.put("ctr.mp4", VerifyingReader(chunks(data, 100_000), len(data)), len(data))
    assert backend._transport.local_cipher == "aes128-ctr"
    assert not stream_mod.supported(backend._sftp)
    assert streams == []
    assert (backend.base_path / "ctr.mp4").read_bytes() == data


def test_an_untested_paramiko_writes_through_paramiko(sftp_backend_factory, streams, monkeypatch):
    backend = sftp_backend_factory("rtkpass")
    backend.stat("warm-up")
    assert stream_mod.supported(backend._sftp)
    monkeypatch.setattr(paramiko, "__version__", "99.0.0")
    assert not stream_mod.supported(backend._sftp)
    data = content(MiB + 1)
    backend.put(f"{uuid.uuid4().hex}.mp4", VerifyingReader(chunks(data, 65536), len(data)), len(data))
    assert streams == []


def test_read1_hands_each_chunk_over_uncut():
    parts = [b"a" * 10, b"b" * 20, b"c" * 5]
    reader = VerifyingReader(iter(parts), 35)
    assert reader.read1() is parts[0]  # the very object received: no copy
    assert reader.read1(8) == b"b" * 8  # cut: the rest comes next
    assert reader.read(4) == b"b" * 4  # read and read1 mix
    assert reader.read1() == b"b" * 8
    assert reader.read1(100) is parts[2]
    assert reader.read1() == b""
    assert reader.tell() == 35
    reader.verify_end()
    assert reader.hexdigests()["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


@pytest.mark.parametrize("stated", ["openssh", 5000, None], ids=["openssh-255KiB", "small", "unstated"])
def test_write_requests_keep_to_the_servers_stated_limit(sftp_backend_factory, monkeypatch, stated):
    """OpenSSH states 255 KiB (limits@openssh.com): requests fill 7 SSH packets. A server that
    states less gets no more; one that states nothing gets 4 packets, as before."""
    sizes = []
    real = stream_mod.WriteStream._request
    monkeypatch.setattr(stream_mod.WriteStream, "_request", lambda self, lane, data: sizes.append(len(data)) or real(self, lane, data))
    if stated != "openssh":
        monkeypatch.setattr(stream_mod, "max_write_bytes", lambda sftp: stated)
    backend = sftp_backend_factory("rtkpass")
    data = content(3 * MiB + 7)
    backend.put("limits.mp4", VerifyingReader(chunks(data, MiB), len(data)), len(data))
    assert (backend.base_path / "limits.mp4").read_bytes() == data
    if stated == "openssh":
        assert stream_mod.max_write_bytes(backend._sftp) == 255 * 1024
    per_packet = backend._sftp.get_channel().out_max_packet_size - 64
    header = 4 + 1 + 4 + 4 + 4 + 8 + 4  # OpenSSH's handles are 4 bytes
    expected = {"openssh": 7 * per_packet - header, 5000: 5000, None: 4 * per_packet - header}[stated]
    assert max(sizes) == expected


class _SmallWindowServer:
    """A paramiko SFTP server (in this process) whose channel window is ``window`` bytes,
    smaller than one write request (dropbear's default is 24 KiB): it grants more window only
    for data it has received."""

    def __init__(self, root, window: int) -> None:
        import socket
        import threading

        self.root, self.window = root, window
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.transports = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        root = self.root

        class Auth(paramiko.ServerInterface):
            def check_auth_password(self, username, password):
                return paramiko.AUTH_SUCCESSFUL

            def get_allowed_auths(self, username):
                return "password"

            def check_channel_request(self, kind, chanid):
                return paramiko.OPEN_SUCCEEDED

        class Files(paramiko.SFTPServerInterface):
            def open(self, path, flags, attr):
                handle = paramiko.SFTPHandle(flags)
                handle.filename = str(root) + path
                handle.readfile = handle.writefile = os.fdopen(os.open(handle.filename, flags, 0o644), "r+b" if flags & os.O_RDWR else "wb")
                return handle

            def stat(self, path):
                return paramiko.SFTPAttributes.from_stat(os.stat(str(root) + path))

            lstat = stat

        conn, _ = self.listener.accept()
        transport = paramiko.Transport(conn, default_window_size=self.window)
        transport.add_server_key(paramiko.ECDSAKey.generate())
        transport.set_subsystem_handler("sftp", paramiko.SFTPServer, Files)
        transport.start_server(server=Auth())
        self.transports.append(transport)

    def client(self) -> paramiko.SFTPClient:
        transport = paramiko.Transport(("127.0.0.1", self.port))
        options = transport.get_security_options()
        options.ciphers = ["aes128-gcm@openssh.com"] + [c for c in options.ciphers if "gcm" not in c]
        transport.connect(username="u", password="p")
        sftp = paramiko.SFTPClient.from_transport(transport)
        sftp.get_channel().settimeout(10)
        return sftp


@pytest.mark.parametrize("window", [16 * 1024, 64 * 1024])
def test_a_server_window_smaller_than_a_request(tmp_path, window):
    """Packets built are sent before waiting for window: waiting first, with the whole request
    held back, waited for ever on a server granting window only for what it received."""
    server = _SmallWindowServer(tmp_path, window)
    sftp = server.client()
    try:
        assert stream_mod.supported(sftp)
        assert sftp.get_channel().out_window_size < 4 * 32 * 1024  # less than one request
        data = content(3 * MiB + 5)
        with sftp.open("/small-window.mp4", "wb") as remote:
            stream = stream_mod.WriteStream(sftp, remote)
            started = time.monotonic()
            stream.write(data)
            assert stream.finish() == len(data)
            assert time.monotonic() - started < 8  # no stall (the channel's timeout is 10 s)
        assert (tmp_path / "small-window.mp4").read_bytes() == data
    finally:
        sftp.get_channel().get_transport().close()
        for t in server.transports:
            t.close()
        server.listener.close()


def test_several_channels_of_one_connection_share_an_upload(sftp_backend_factory, monkeypatch):
    """ARCHIVE_SFTP_CHANNELS=3: requests go to the channel with the most window free, each at
    its offset, through each channel's own handle on the one temp file."""
    monkeypatch.setattr(sftp_mod, "PARALLEL_MIN_BYTES", MiB)
    lanes = []
    real = stream_mod.WriteStream._request
    monkeypatch.setattr(stream_mod.WriteStream, "_request", lambda self, lane, data: lanes.append(lane.channel.get_id()) or real(self, lane, data))
    backend = sftp_backend_factory("rtkpass", archive_sftp_channels=3)
    data = content(SIZE)
    reader = VerifyingReader(chunks(data, 300_001), SIZE)
    backend.put("a/rec.mp4", reader, SIZE)
    assert (backend.base_path / "a/rec.mp4").read_bytes() == data
    assert backend.last_upload_channels == 3 and len(set(lanes)) == 3, lanes
    assert leftovers(backend) == []
    lanes.clear()  # the channels serve the next put too; a small one uses only the first
    backend.put("a/small.m4a", VerifyingReader(iter([data[:1000]]), 1000), 1000)
    assert backend.last_upload_channels == 1 and len(set(lanes)) == 1
    backend.put("a/rec2.mp4", VerifyingReader(chunks(data, MiB), SIZE), SIZE)
    assert (backend.base_path / "a/rec2.mp4").read_bytes() == data
    assert len(backend._channels) == 2  # opened once per connection


def test_channels_the_server_refuses_leave_fewer(sftp_backend_factory, monkeypatch):
    """A server that refuses another session on the connection (OpenSSH's MaxSessions): the
    upload goes over the channels it has."""
    monkeypatch.setattr(sftp_mod, "PARALLEL_MIN_BYTES", MiB)
    backend = sftp_backend_factory("rtkpass", archive_sftp_channels=4)
    backend.stat("warm-up")
    real = paramiko.SFTPClient.from_transport
    opened = []

    def refusing_the_third(transport, *args, **kwargs):
        if len(opened) >= 1:
            raise paramiko.ChannelException(1, "Administratively prohibited")
        opened.append(1)
        return real(transport, *args, **kwargs)

    monkeypatch.setattr(paramiko.SFTPClient, "from_transport", refusing_the_third)
    data = content(SIZE)
    backend.put("refused.mp4", VerifyingReader(chunks(data, MiB), SIZE), SIZE)
    assert (backend.base_path / "refused.mp4").read_bytes() == data
    assert backend.last_upload_channels == 2 and backend._channels_refused
