"""The file:// backend: atomic puts, nothing partial, nothing outside the root."""

from __future__ import annotations

import io

import pytest

from rtk_archiver.streams import SizeMismatch, VerifyingReader
from storage_backends import PermanentStorageError, open_backend, parse_destination_url


@pytest.fixture
def backend(tmp_path):
    return open_backend(parse_destination_url(f"file://{tmp_path}/root"), settings=None)


def gen(total: int, chunk: int = 65536):
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield bytes([sent % 251]) * n
        sent += n


def test_put_stat_read_delete(backend, tmp_path):
    info = backend.put("a/b/file.bin", VerifyingReader(gen(3_000_000), 3_000_000), 3_000_000)
    assert info.size == 3_000_000
    assert backend.stat("a/b/file.bin").size == 3_000_000
    assert backend.stat("a/b/missing") is None
    backend.put_bytes("a/side.json", b"{}")
    assert backend.read_bytes("a/side.json") == b"{}"
    assert backend.read_bytes("nope") is None
    backend.delete("a/side.json")
    assert backend.stat("a/side.json") is None
    assert backend.url("a/b/file.bin") == f"file://{tmp_path}/root/a/b/file.bin"


def test_short_source_leaves_nothing(backend, tmp_path):
    with pytest.raises(SizeMismatch):
        backend.put("x.bin", VerifyingReader(gen(1_000_000), 2_000_000), 2_000_000)
    assert list((tmp_path / "root").rglob("*")) == []


def test_failed_overwrite_keeps_the_old_file(backend, tmp_path):
    backend.put_bytes("x.bin", b"old")

    class Boom(io.RawIOBase):
        def read(self, n=-1):
            raise ConnectionResetError("reset")

    with pytest.raises(ConnectionResetError):
        backend.put("x.bin", Boom(), 10, replace=True)
    assert backend.read_bytes("x.bin") == b"old"
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["x.bin"]


def test_refuses_keys_outside_root(backend):
    with pytest.raises(PermanentStorageError):
        backend.put_bytes("../escape", b"x")
