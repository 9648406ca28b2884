from __future__ import annotations

import hashlib
import zlib

import pytest

from rtk_archiver.streams import SizeMismatch, VerifyingReader


def chunks(data: bytes, n: int):
    for i in range(0, len(data), n):
        yield data[i : i + n]


def test_reads_hashes_and_completes():
    data = bytes(range(256)) * 1000
    r = VerifyingReader(chunks(data, 777), len(data), ("md5", "crc32", "crc32c"))
    out = b"".join(iter(lambda: r.read(4096), b""))
    assert out == data and r.complete
    d = r.hexdigests()
    assert d["sha256"] == hashlib.sha256(data).hexdigest()
    assert d["md5"] == hashlib.md5(data).hexdigest()
    assert d["crc32"] == f"{zlib.crc32(data):08x}"
    assert len(d["crc32c"]) == 8


def test_short_body_raises_at_eof():
    r = VerifyingReader(chunks(b"x" * 100, 30), 150)
    with pytest.raises(SizeMismatch, match="ended after 100 bytes"):
        while r.read(64):
            pass


def test_long_body_raises_as_soon_as_it_overflows():
    r = VerifyingReader(chunks(b"x" * 200, 50), 120)
    with pytest.raises(SizeMismatch, match="longer"):
        while r.read(50):
            pass


def test_read_all():
    r = VerifyingReader(chunks(b"abc" * 10, 7), 30)
    assert r.read() == b"abc" * 10 and r.complete
