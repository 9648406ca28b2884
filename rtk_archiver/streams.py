"""A file-like view of a byte stream that counts, hashes and enforces the expected size.

The transfer hands a ``VerifyingReader`` to a backend's ``put``: the backend reads from it
as from a file; the reader pulls chunks from the HTTP download, feeds the hashes, and
raises ``SizeMismatch`` the moment the body turns out longer or shorter than expected, so
the backend aborts instead of committing a bad object.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator


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


def new_hasher(name: str):
    """A hasher for a canonical hash name (hashlib names, 'crc32', 'crc32c')."""
    if name in ("crc32", "crc32c"):
        return _Crc(name)
    return hashlib.new(name)


class VerifyingReader:
    """Non-seekable, read-only file-like over an iterator of byte chunks."""

    def __init__(
        self,
        chunks: Iterable[bytes],
        expected_size: int,
        hash_names: Iterable[str] = ("sha256",),
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self.expected_size = expected_size
        self.hashers = {name: new_hasher(name) for name in dict.fromkeys(["sha256", *hash_names])}
        self.bytes_read = 0
        self._buffer = bytearray()
        self._eof = False
        self._on_progress = on_progress

    # file-like protocol used by boto3, google-cloud-storage, paramiko code and shutil
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.bytes_read

    def _take(self, data: bytes) -> bytes:
        self.bytes_read += len(data)
        if self.bytes_read > self.expected_size:
            raise SizeMismatch(f"body is longer than the expected {self.expected_size} bytes")
        for h in self.hashers.values():
            h.update(data)
        if self._on_progress is not None:
            self._on_progress(len(data))
        return data

    def _next_chunk(self) -> bytes:
        for chunk in self._chunks:
            if chunk:
                return bytes(chunk)
        self._eof = True
        if self.bytes_read + len(self._buffer) != self.expected_size:
            raise SizeMismatch(
                f"body ended after {self.bytes_read + len(self._buffer)} bytes, expected {self.expected_size}"
            )
        return b""

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            while not self._eof:
                self._buffer += self._next_chunk()
            data = bytes(self._buffer)
            self._buffer.clear()
            return self._take(data)
        while len(self._buffer) < size and not self._eof:
            chunk = self._next_chunk()
            if not self._buffer and len(chunk) == size:
                return self._take(chunk)  # fast path: no copy
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return self._take(data)

    def hexdigests(self) -> dict[str, str]:
        return {name: h.hexdigest() for name, h in self.hashers.items()}

    @property
    def complete(self) -> bool:
        return self._eof and self.bytes_read == self.expected_size

    def verify_end(self) -> None:
        """Confirm the body ends exactly at the expected size (a consumer may stop reading at
        ``expected_size`` without asking for EOF)."""
        if self.read(1):
            raise SizeMismatch(f"body is longer than the expected {self.expected_size} bytes")
