"""A file-like view of a byte stream that counts, hashes and enforces the expected size.

The transfer hands a ``VerifyingReader`` to a backend's ``put``: the backend reads from it
as from a file; the reader pulls chunks from the HTTP download, feeds the hashes, and
raises ``SizeMismatch`` the moment the body turns out longer or shorter than expected, so
the backend aborts instead of committing a bad object. With read-ahead, a background thread
downloads and hashes while the backend uploads (bounded: a few chunks).
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from rtk_archiver import interrupt


class SizeMismatch(Exception):
    """The body was not the size it was announced to be."""


class _Crc:
    """hashlib-like wrapper for CRC32 (zlib) and CRC32C (google_crc32c)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.value = 0
        if kind == "crc32c":
            import google_crc32c

            self._ext = google_crc32c.Checksum()
        else:
            self._ext = None

    def update(self, data: bytes) -> None:
        if self._ext is not None:
            self._ext.update(data)
        else:
            self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        if self._ext is not None:
            return self._ext.digest().hex()
        return f"{self.value & 0xFFFFFFFF:08x}"


def read_buffer(source, size: int) -> bytearray:
    """The next ``size`` bytes of ``source`` (fewer at its end) in one new buffer, read into
    it in place (``readinto`` when the source has it, as ``VerifyingReader`` does): a part a
    backend keeps in memory is held once, not as pieces plus their join. Libraries that send
    a ``bytearray`` as it is (botocore, requests/urllib3) send it without a copy."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    readinto = getattr(source, "readinto", None)
    try:
        while got < size:
            if readinto is not None:
                n = readinto(view[got:])
            else:
                data = source.read(size - got)
                n = len(data)
                view[got : got + n] = data
            if not n:
                break
            got += n
    finally:
        view.release()
    if got < size:
        del buf[got:]
    return buf


def new_hasher(name: str):
    """A hasher for a canonical hash name (hashlib names, 'crc32', 'crc32c')."""
    if name in ("crc32", "crc32c"):
        return _Crc(name)
    return hashlib.new(name)


class ReadAhead:
    """Iterates ``chunks`` in a background thread, up to ``depth`` chunks ahead of the consumer,
    so the download (and the hashing done as chunks arrive) overlaps the upload. An exception
    of the producer is raised to the consumer, in order. ``close`` stops the producer."""

    _END = object()

    def __init__(self, chunks: Iterable[bytes], depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, args=(iter(chunks),), name="rtk-read-ahead", daemon=True)
        self._thread.start()

    def _offer(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                if not self._offer(chunk):
                    return
            self._offer(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._offer(exc)

    def __iter__(self) -> "ReadAhead":
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        while True:  # a stop request ends the wait even if the producer is stuck on the network
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                interrupt.check()
        if item is self._END:
            self._done = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def close(self, timeout: float = 1.0) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)


class VerifyingReader:
    """Non-seekable, read-only file-like over an iterator of byte chunks.

    Every chunk is counted and hashed as it arrives (``SizeMismatch`` as soon as the body is
    longer than expected, or at its end if shorter; ``expected_size`` None: the body's own
    end, whatever its size). With ``read_ahead`` > 0 that happens in a background thread up
    to ``read_ahead`` chunks ahead of ``read``: call ``close``. A stop request
    (``rtk_archiver.interrupt``) makes ``read`` raise ``Interrupted``."""

    def __init__(
        self,
        chunks: Iterable[bytes],
        expected_size: int | None,
        hash_names: Iterable[str] = ("sha256",),
        on_progress: Callable[[int], None] | None = None,
        read_ahead: int = 0,
    ) -> None:
        self.expected_size = expected_size
        self.hashers = {name: new_hasher(name) for name in dict.fromkeys(["sha256", *hash_names])}
        self.received = 0  # bytes that arrived (counted and hashed)
        self.bytes_read = 0  # bytes handed out by read()
        self._on_progress = on_progress
        checked = self._checked(chunks)
        self._ahead = ReadAhead(checked, read_ahead) if read_ahead > 0 else None
        self._chunks: Iterator[bytes] = self._ahead if self._ahead is not None else checked
        self._pending: deque[bytes] = deque()  # received, not yet read
        self._pending_size = 0
        self._eof = False

    def _checked(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if not chunk:
                continue
            self.received += len(chunk)
            if self.expected_size is not None and self.received > self.expected_size:
                raise SizeMismatch(f"body is longer than the expected {self.expected_size} bytes")
            for h in self.hashers.values():
                h.update(chunk)
            if self._on_progress is not None:
                self._on_progress(len(chunk))
            yield bytes(chunk)
        if self.expected_size is not None and self.received != self.expected_size:
            raise SizeMismatch(f"body ended after {self.received} bytes, expected {self.expected_size}")

    # file-like protocol used by boto3, google-cloud-storage, paramiko code and shutil
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.bytes_read

    def _fill(self, size: int | None) -> None:
        while not self._eof and (size is None or self._pending_size < size):
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._eof = True
                break
            self._pending.append(chunk)
            self._pending_size += len(chunk)

    def read(self, size: int = -1) -> bytes:
        interrupt.check()
        return self._read(size)

    def read1(self, size: int = -1) -> bytes:
        """The next chunk as it was received, without joining or copying (``io``'s ``read1``):
        at most ``size`` bytes (-1: the whole chunk); b"" at the end. For a backend that takes
        chunks of any size (SFTP), this spares cutting and re-joining every chunk under the GIL."""
        interrupt.check()
        chunk = self._next_chunk()
        if chunk is None:
            return b""
        if 0 <= size < len(chunk):
            rest, chunk = chunk[size:], chunk[:size]
            self._pending.appendleft(rest)
            self._pending_size += len(rest)
        self.bytes_read += len(chunk)
        return chunk

    def _next_chunk(self) -> bytes | None:
        """The next chunk: one left over from a read, else the next one received (None at the end)."""
        if self._pending:
            chunk = self._pending.popleft()
            self._pending_size -= len(chunk)
            return chunk
        if self._eof:
            return None
        try:
            return next(self._chunks)
        except StopIteration:
            self._eof = True
            return None

    def _read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all to the end with -1). A read across chunks collects them
        into one buffer as they come, each dropped once copied (``BytesIO.getvalue`` hands
        its buffer over without a copy): the result is held once, not beside its pieces."""
        want = None if size is None or size < 0 else size
        first: bytes | None = None
        out: io.BytesIO | None = None
        taken = 0
        while want is None or taken < want:
            chunk = self._next_chunk()
            if chunk is None:
                break
            if want is not None and taken + len(chunk) > want:
                cut = want - taken
                rest, chunk = chunk[cut:], chunk[:cut]
                self._pending.appendleft(rest)
                self._pending_size += len(rest)
            taken += len(chunk)
            if first is None and out is None:
                first = chunk
            else:
                if out is None:
                    out = io.BytesIO()
                    if want is not None:  # its buffer sized once (no growth: no heap fragments)
                        out.seek(want - 1)
                        out.write(b"\0")
                        out.seek(0)
                    out.write(first)
                    first = None
                out.write(chunk)
            del chunk
        if out is not None:
            out.truncate(taken)
        data = out.getvalue() if out is not None else (first if first is not None else b"")
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` (any writable bytes-like) with the next bytes, as many as it holds
        unless the body ends first; the count. No intermediate copy of the whole: a backend
        that keeps a part in memory (S3) holds it once."""
        interrupt.check()
        view = memoryview(buffer).cast("B")
        want, filled = len(view), 0
        while filled < want:
            if not self._pending:
                self._fill(1)
                if not self._pending:
                    break
            chunk = self._pending.popleft()
            take = min(len(chunk), want - filled)
            view[filled : filled + take] = memoryview(chunk)[:take]
            if take < len(chunk):
                self._pending.appendleft(chunk[take:])
            self._pending_size -= take
            filled += take
        self.bytes_read += filled
        return filled

    def hexdigests(self) -> dict[str, str]:
        return {name: h.hexdigest() for name, h in self.hashers.items()}

    @property
    def complete(self) -> bool:
        return self._eof and (self.expected_size is None or self.bytes_read == self.expected_size)

    def verify_end(self) -> None:
        """Confirm the body ends exactly at the expected size (a consumer may stop reading at
        ``expected_size`` without asking for EOF)."""
        if self._read(1):  # (never with expected_size None: the backend read to the end)
            raise SizeMismatch(f"body is longer than the expected {self.expected_size} bytes")

    def close(self) -> None:
        """Stop reading ahead (after a failed upload); idempotent."""
        if self._ahead is not None:
            self._ahead.close()
