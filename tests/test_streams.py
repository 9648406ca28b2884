from __future__ import annotations

import hashlib
import time
import zlib

import pytest

from rtk_archiver.streams import SizeMismatch, VerifyingReader


def chunks(data: bytes, n: int):
    for i in range(0, len(data), n):
        yield data[i : i + n]


AHEAD = pytest.mark.parametrize("ahead", [0, 3], ids=["inline", "read-ahead"])


@AHEAD
def test_reads_hashes_and_completes(ahead):
    data = bytes(range(256)) * 1000
    r = VerifyingReader(chunks(data, 777), len(data), ("md5", "crc32", "crc32c"), read_ahead=ahead)
    out = b"".join(iter(lambda: r.read(4096), b""))
    assert out == data and r.complete
    d = r.hexdigests()
    assert d["sha256"] == hashlib.sha256(data).hexdigest()
    assert d["md5"] == hashlib.md5(data).hexdigest()
    assert d["crc32"] == f"{zlib.crc32(data):08x}"
    assert len(d["crc32c"]) == 8


@AHEAD
def test_short_body_raises_at_eof(ahead):
    r = VerifyingReader(chunks(b"x" * 100, 30), 150, read_ahead=ahead)
    with pytest.raises(SizeMismatch, match="ended after 100 bytes"):
        while r.read(64):
            pass


@AHEAD
def test_long_body_raises_as_soon_as_it_overflows(ahead):
    r = VerifyingReader(chunks(b"x" * 200, 50), 120, read_ahead=ahead)
    with pytest.raises(SizeMismatch, match="longer"):
        while r.read(50):
            pass


@AHEAD
def test_read_all(ahead):
    r = VerifyingReader(chunks(b"abc" * 10, 7), 30, read_ahead=ahead)
    assert r.read() == b"abc" * 10 and r.complete


@AHEAD
def test_odd_read_sizes_return_exact_bytes(ahead):
    data = bytes(range(256)) * 40
    r = VerifyingReader(chunks(data, 1000), len(data), read_ahead=ahead)
    out, n = [], 1
    while piece := r.read(n):
        assert len(piece) == n or r.bytes_read == len(data)
        out.append(piece)
        n = n * 3 % 4099 + 1
    assert b"".join(out) == data and r.tell() == len(data)


def test_read_ahead_is_bounded_and_runs_in_parallel():
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield b"x" * 10

    r = VerifyingReader(source(), 1000, read_ahead=4)
    deadline = time.monotonic() + 5
    while len(produced) < 5 and time.monotonic() < deadline:  # filled ahead without any read
        time.sleep(0.01)
    time.sleep(0.1)
    assert 4 <= len(produced) <= 6  # the queue's depth, plus one chunk in hand
    assert r.read(10) == b"x" * 10


def test_close_stops_the_producer_of_an_abandoned_upload():
    def endless():
        while True:
            yield b"y" * 100

    r = VerifyingReader(endless(), 10**12, read_ahead=2)
    assert r.read(50) == b"y" * 50
    r.close()
    thread = r._ahead._thread
    thread.join(5)
    assert not thread.is_alive()
