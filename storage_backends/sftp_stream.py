"""Pipelined SFTP writes, sent as whole SSH packets built here, over paramiko's own connection.

paramiko stays the SFTP library: it connects, authenticates, negotiates the keys, opens and
closes the file, reads every answer and re-keys. What this module replaces is the path of the
bytes of a write request, where paramiko spends most of an upload's CPU (measured: ~0.8 s of
the uploading thread per 256 MiB, about 100 us per 32 KiB packet): a ``Message`` per request and
per packet, eight copies of each packet's data, one ``send`` per packet, and a lock handshake per
packet. Here a request's packets are built with one copy each, encrypted with the connection's
own AES-GCM engine, and sent with one ``sendmsg``, under the same locks, in the same order of
sequence numbers and nonces, with the same re-key accounting as ``paramiko.packet.Packetizer``.

Every write's status is read and checked (paramiko's pipelined ``SFTPFile.write`` lets
``close()`` discard the statuses still unread, so a failed write in the middle of a file could go
unnoticed); ``finish`` returns the bytes the server acknowledged.

Only used when the connection is what it was written and tested for (``supported``): paramiko
``TESTED_PARAMIKO``, an AEAD (AES-GCM) outbound cipher, no compression; otherwise the backend
writes through ``SFTPFile.write`` as before. Any failure while sending closes the connection
(its packet stream can no longer be trusted); the backend then fails the upload as it does for
a lost connection, and its next use reconnects.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterable

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_STATUS, CMD_WRITE

TESTED_PARAMIKO = "5.1.0"
MSG_CHANNEL_DATA = 94
GCM_BLOCK = 16
#: a write request fills this many whole SSH packets when the server states (limits@openssh.com)
#: that it takes writes that large (OpenSSH: 255 KiB); each request costs a status to read, in
#: paramiko's Python (measured, 1 GiB: 7 packets 1.07x rclone's time, 4 packets 1.24x)
PACKETS_PER_REQUEST = 7
#: without that statement: what this backend has always sent (4 packets, ~128 KiB)
PACKETS_PER_REQUEST_UNSTATED = 4
#: statuses read as soon as they have arrived, at the latest when this many requests are unanswered
MAX_UNANSWERED = 256
NOISE_BYTES = 4096
#: packets sent with one sendmsg at most (a window granted in slivers cannot pile up more)
MAX_BATCH = 16

_P = "_Packetizer__"  # paramiko.packet.Packetizer's private attributes, read and kept as it does
_NEEDED = ("block_engine_out", "aead_out", "etm_out", "compress_engine_out", "dump_packets", "iv_out",
           "sequence_number_out", "sent_bytes", "sent_packets", "need_rekey", "write_lock", "socket",
           "closed", "keepalive_last", "block_size_out")


def supported(sftp: paramiko.SFTPClient) -> bool:
    """Whether this connection's outbound packets can be built here (see the module)."""
    if paramiko.__version__ != TESTED_PARAMIKO:
        return False
    try:
        transport = sftp.get_channel().get_transport()
        packetizer = transport.packetizer
        state = {name: getattr(packetizer, _P + name) for name in _NEEDED}
    except AttributeError:
        return False
    return (
        bool(state["aead_out"]) and not state["etm_out"] and state["compress_engine_out"] is None
        and not state["dump_packets"] and state["block_size_out"] == GCM_BLOCK
        and hasattr(transport, "clear_to_send") and hasattr(transport, "clear_to_send_lock")
    )


def max_write_bytes(sftp: paramiko.SFTPClient) -> int | None:
    """The largest write the server takes, as it states in answer to ``limits@openssh.com``
    (asked once per connection, whichever of its channels asks); None if it does not say."""
    transport = sftp.get_channel().get_transport()
    known = getattr(transport, "_rtk_max_write", False)
    if known is not False:
        return known
    most = None
    try:
        t, msg = sftp._request(CMD_EXTENDED, "limits@openssh.com")
        if t == CMD_EXTENDED_REPLY:
            packet = msg.get_int64()  # the largest SFTP packet, header included (0: not stated)
            msg.get_int64()  # max read length
            write = msg.get_int64()  # 0: not stated
            header = 4 + 1 + 4 + 4 + 256 + 8 + 4  # a write request's header, with the longest handle (SFTP v3)
            stated = [n for n in (write, packet - header if packet else 0) if n > 0]
            most = min(stated) if stated else None
    except (OSError, EOFError, paramiko.SFTPError):  # unsupported by this server (a status, even EOF)
        most = None
    transport._rtk_max_write = most
    return most


class _Lane:
    """One SFTP channel of the stream, with its own handle on the file and its own window."""

    def __init__(self, stream: "WriteStream", sftp: paramiko.SFTPClient, remote: paramiko.SFTPFile) -> None:
        self.stream, self.sftp, self.channel = stream, sftp, sftp.get_channel()
        self.handle: bytes = remote.handle
        self.unanswered: dict[int, int] = {}  # request number -> its data bytes
        self.per_packet = self.channel.out_max_packet_size - 64  # as paramiko's Channel sends
        self.header_size = 4 + 1 + 4 + 4 + len(self.handle) + 8 + 4
        packets = PACKETS_PER_REQUEST_UNSTATED
        most = max_write_bytes(sftp)
        if most is not None:
            packets = max(1, min(PACKETS_PER_REQUEST, (most + self.header_size) // self.per_packet))
        self.per_request = packets * self.per_packet - self.header_size
        if most is not None and most < self.per_request:  # a server that takes less than a packet
            self.per_request = most

    def read_status(self) -> None:
        self.sftp._read_response()  # paramiko reads it and calls _async_response

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        stream = self.stream
        size = self.unanswered.pop(num, 0)
        if t != CMD_STATUS:
            stream.error = stream.error or paramiko.SFTPError(f"expected a status for write #{num}, got message type {t}")
            return
        try:
            self.sftp._convert_status(msg)  # raises on anything but OK
        except (OSError, EOFError) as exc:
            stream.error = stream.error or exc
            return
        stream.acknowledged += size


class WriteStream:
    """Sequential pipelined writes to one remote file, from its start, over one or more SFTP
    channels of the same SSH connection (``lanes``: each an SFTP client on its own channel and
    its own handle on the file). Each channel has its own window (OpenSSH: 2 MiB), which
    bounds one channel to 2 MiB per round trip; a request goes to the channel with the most
    window free, at its offset in the file."""

    def __init__(self, sftp: paramiko.SFTPClient, remote: paramiko.SFTPFile,
                 more: list[tuple[paramiko.SFTPClient, paramiko.SFTPFile]] = ()) -> None:
        self.transport = sftp.get_channel().get_transport()
        self.packetizer = self.transport.packetizer
        self.offset = 0
        self.acknowledged = 0
        self.error: BaseException | None = None
        self._noise, self._noise_at = b"", 0
        self.lanes = [_Lane(self, sftp, remote)] + [_Lane(self, c, r) for c, r in more]
        for lane in self.lanes[1:]:
            if lane.channel.get_transport() is not self.transport:
                raise ValueError("every lane of a WriteStream is a channel of the same SSH connection")
        self._per_request = min(lane.per_request for lane in self.lanes)

    # -- the interface ---------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        per_request = self._per_request
        for start in range(0, len(view), per_request):
            self._raise_error()
            lane = self._lane()
            self._request(lane, view[start:start + per_request])
            if len(lane.unanswered) >= MAX_UNANSWERED:
                lane.read_status()
            for each in self.lanes:
                while each.unanswered and each.channel.recv_ready():
                    each.read_status()

    def finish(self) -> int:
        """Wait for every status; raise the first failure; the bytes acknowledged."""
        for lane in self.lanes:
            while lane.unanswered and self.error is None:
                lane.read_status()
        self._raise_error()
        return self.acknowledged

    def _lane(self) -> _Lane:
        if len(self.lanes) == 1:
            return self.lanes[0]
        return max(self.lanes, key=lambda lane: lane.channel.out_window_size)

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    # -- requests ------------------------------------------------------------------------------
    def _request(self, lane: _Lane, data: memoryview) -> None:
        sftp = lane.sftp
        with sftp._lock:
            num = sftp.request_number
            sftp.request_number += 1
            sftp._expecting[num] = lane
        lane.unanswered[num] = len(data)
        header = struct.pack(">IBII", lane.header_size - 4 + len(data), CMD_WRITE, num, len(lane.handle)) \
            + lane.handle + struct.pack(">QI", self.offset, len(data))
        self.offset += len(data)
        try:
            self._send_request(lane, header, data)
        except BaseException:
            # a stalled window, or a packet stream cut in the middle of a packet: the connection
            # is of no more use (the backend connects again for its next request)
            self.transport.close()
            raise

    def _send_request(self, lane: _Lane, header: bytes, data: memoryview) -> None:
        """The request's bytes as SSH packets, each given its channel window first. Packets
        built are sent together, and always before waiting for more window: a server grants
        window only for data it has received (with a window smaller than a request, waiting
        first would wait for ever)."""
        built: list[bytearray] = []
        pending = [memoryview(header), data]
        channel = lane.channel
        while pending:
            wanted = sum(len(p) for p in pending)
            # only this stream takes from the window: what is there now stays there
            if built and (channel.out_window_size < min(wanted, lane.per_packet) or len(built) >= MAX_BATCH):
                self._send(built)
                built = []
            built.append(self._packet(channel, self._window(channel, wanted), pending))
        self._send(built)

    def _packet(self, channel: paramiko.Channel, size: int, pending: list[memoryview]) -> bytearray:
        """The plaintext of one SSH_MSG_CHANNEL_DATA packet carrying the next ``size`` bytes of
        ``pending`` (taken from it)."""
        padding = 3 + GCM_BLOCK - ((9 + size + 4) % GCM_BLOCK)
        plain = bytearray(1 + 9 + size + padding)
        struct.pack_into(">BBII", plain, 0, padding, MSG_CHANNEL_DATA, channel.remote_chanid, size)
        at, left = 10, size
        while left:
            part = pending[0]
            take = min(len(part), left)
            plain[at:at + take] = part[:take]
            at += take
            left -= take
            if take == len(part):
                pending.pop(0)
            else:
                pending[0] = part[take:]
        plain[at:] = self._padding(padding)
        return plain

    def _padding(self, size: int) -> bytes:
        """Random padding (RFC 4253), drawn from the system 4 KiB at a time, not per packet."""
        if len(self._noise) - self._noise_at < size:
            self._noise, self._noise_at = os.urandom(NOISE_BYTES), 0
        self._noise_at += size
        return self._noise[self._noise_at - size:self._noise_at]

    def _window(self, channel: paramiko.Channel, wanted: int) -> int:
        with channel.lock:
            if channel.closed:
                raise EOFError("the SFTP channel is closed")
            size = channel._wait_for_send_window(wanted)  # at most max packet - 64; waits; times out
        if size == 0:
            raise EOFError("the SFTP channel was closed by the server")
        return size

    def _send(self, plains: Iterable[bytearray]) -> None:
        transport = self.transport
        started = time.time()
        while True:  # as Transport._send_user_message: never while keys are being exchanged
            transport.clear_to_send.wait(0.1)
            if not transport.active:
                raise EOFError("the SSH connection is closed")
            transport.clear_to_send_lock.acquire()
            if transport.clear_to_send.is_set():
                break
            transport.clear_to_send_lock.release()
            if time.time() > started + transport.clear_to_send_timeout:
                raise paramiko.SSHException("Key-exchange timed out waiting for key negotiation")
        try:
            lock = getattr(self.packetizer, _P + "write_lock")
            with lock:
                self._encrypt_and_send(plains)
        finally:
            transport.clear_to_send_lock.release()

    def _encrypt_and_send(self, plains: Iterable[bytearray]) -> None:
        """What ``Packetizer.send_message`` does for an AEAD cipher, for several packets at once.
        Caller holds the packetizer's write lock."""
        pk = self.packetizer
        engine = getattr(pk, _P + "block_engine_out")
        iv = getattr(pk, _P + "iv_out")
        seq = getattr(pk, _P + "sequence_number_out")
        buffers = []
        sent = 0
        for plain in plains:
            length = struct.pack(">I", len(plain))
            buffers.append(length)
            ciphertext = engine.encrypt(iv, plain, length)
            buffers.append(ciphertext)
            sent += 4 + len(ciphertext)
            counter = int.from_bytes(iv[4:], "big") + 1
            iv = iv[:4] + counter.to_bytes(8, "big")
            seq = (seq + 1) & 0xFFFFFFFF
            if seq == 0 and not self.transport._initial_kex_done:
                raise paramiko.SSHException("Sequence number rolled over during initial kex!")
        setattr(pk, _P + "iv_out", iv)
        setattr(pk, _P + "sequence_number_out", seq)
        self._sendmsg(getattr(pk, _P + "socket"), buffers)
        setattr(pk, _P + "keepalive_last", time.time())
        sent_bytes = getattr(pk, _P + "sent_bytes") + sent
        sent_packets = getattr(pk, _P + "sent_packets") + len(buffers) // 2
        setattr(pk, _P + "sent_bytes", sent_bytes)
        setattr(pk, _P + "sent_packets", sent_packets)
        if (sent_packets >= pk.REKEY_PACKETS or sent_bytes >= pk.REKEY_BYTES) and not getattr(pk, _P + "need_rekey"):
            setattr(pk, _P + "received_bytes_overflow", 0)
            setattr(pk, _P + "received_packets_overflow", 0)
            pk._trigger_rekey()

    def _sendmsg(self, sock: socket.socket, buffers: list) -> None:
        """All of ``buffers``, as ``Packetizer.write_all`` sends them (the socket times out every
        0.1 s so that a closed connection is noticed); no progress for the channel's timeout
        (``ARCHIVE_UPLOAD_STALL_SECONDS``) is a stall."""
        views = [memoryview(b) for b in buffers]
        limit = self.lanes[0].channel.gettimeout()
        progress = time.monotonic()
        while views:
            try:
                n = sock.sendmsg(views)
            except (socket.timeout, BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                raise EOFError(f"sending to the SSH server failed: {exc}") from None
            if n == 0:
                if getattr(self.packetizer, _P + "closed") or not self.transport.active:
                    raise EOFError("the SSH connection is closed")
                if limit is not None and time.monotonic() - progress > limit:
                    raise socket.timeout(f"the SSH server took no data for {limit:.0f} s")
                continue
            progress = time.monotonic()
            while n:
                if n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][n:]
                    n = 0
