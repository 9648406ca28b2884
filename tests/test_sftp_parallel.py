"""SFTP uploads over several connections (``ARCHIVE_SFTP_CONNECTIONS``, storage_backends/sftp_parallel.py)
against a real OpenSSH sshd: disjoint ranges land at their offsets, any failing connection fails
the put with nothing at the final name and no temp file, a server that refuses the extra
connections leaves the upload on the archiver's own, and small files start no worker."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time

import pytest

import storage_backends.sftp as sftp_mod
from rtk_archiver.streams import VerifyingReader
from storage_backends import StorageError
from storage_backends.sftp_parallel import ParallelUpload, Worker
from storage_backends.tempnames import TEMP_MARKER
from tests.fixtures import free_port

MiB = 1024 * 1024
SIZE = 5 * MiB + 12345  # the last chunk is short


def content(n: int) -> bytes:
    """Bytes that differ at every 4 KiB block: a range written at the wrong offset shows."""
    return b"".join(i.to_bytes(8, "big") * 512 for i in range(-(-n // 4096)))[:n]


def chunks(data: bytes, size: int = 256 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.fixture
def parallel(sftp_backend_factory, monkeypatch):
    """A backend with 3 connections whose 2 workers are connected before the put starts
    (otherwise the archiver's own connection writes until they are)."""
    monkeypatch.setattr(sftp_mod, "PARALLEL_MIN_BYTES", MiB)

    def make(wait: bool = True, **kw):
        backend = sftp_backend_factory("rtkecdsa", archive_sftp_connections=3, **kw)
        backend.stat("warm-up")  # connected: the workers get the verified host key
        if wait:
            pool = backend._writer_pool(SIZE)
            deadline = time.monotonic() + 30
            while len(pool.ready()) < 2:
                assert time.monotonic() < deadline, [w.reason for w in pool.workers]
                time.sleep(0.05)
        return backend

    return make


def leftovers(backend) -> list[str]:
    return [p.name for p in backend.base_path.rglob("*") if TEMP_MARKER in p.name]


def test_ranges_land_at_their_offsets(parallel):
    backend = parallel()
    data = content(SIZE)
    reader = VerifyingReader(chunks(data), SIZE)
    info = backend.put("a/rec.mp4", reader, SIZE)
    assert info.size == SIZE
    assert backend.last_upload_connections == 2  # the two workers took every chunk
    stored = (backend.base_path / "a/rec.mp4").read_bytes()
    assert stored == data
    assert reader.hexdigests()["sha256"] == hashlib.sha256(stored).hexdigest()
    # the workers serve the backend's next put as well (the audio after the video)
    backend.put("a/rec.m4a", VerifyingReader(chunks(data[:2 * MiB + 1]), 2 * MiB + 1), 2 * MiB + 1)
    assert (backend.base_path / "a/rec.m4a").read_bytes() == data[:2 * MiB + 1]
    assert leftovers(backend) == []
    pids = [w.proc.pid for w in backend._pool.workers]
    backend.close()
    for pid in pids:  # stopped with the backend
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_archivers_own_connection_writes_until_workers_are_ready(parallel):
    backend = parallel(wait=False)
    data = content(SIZE)
    backend.put("rec.mp4", VerifyingReader(chunks(data), SIZE), SIZE)
    assert (backend.base_path / "rec.mp4").read_bytes() == data


def test_a_worker_dying_fails_the_put_and_leaves_nothing(parallel):
    backend = parallel()
    data = content(SIZE)
    victim = backend._pool.workers[0]

    def killing():
        for i, piece in enumerate(chunks(data)):
            if i == 6:
                os.kill(victim.proc.pid, signal.SIGKILL)
                victim.proc.wait()
            yield piece

    with pytest.raises(StorageError, match="connection 1"):
        backend.put("rec.mp4", VerifyingReader(killing(), SIZE), SIZE)
    assert not (backend.base_path / "rec.mp4").exists()
    assert leftovers(backend) == []
    # the backend goes on with what is left (the other worker, or its own connection)
    backend.put("rec.mp4", VerifyingReader(chunks(data), SIZE), SIZE)
    assert (backend.base_path / "rec.mp4").read_bytes() == data


def test_a_download_failing_midway_leaves_nothing_and_the_workers_reusable(parallel):
    backend = parallel()
    data = content(SIZE)

    class Broken(Exception):
        pass

    def breaking():
        yield from chunks(data[:3 * MiB])
        raise Broken("connection reset by the source")

    with pytest.raises(Broken):  # the source's own error, as it is
        backend.put("rec.mp4", VerifyingReader(breaking(), SIZE), SIZE)
    assert not (backend.base_path / "rec.mp4").exists()
    assert leftovers(backend) == []
    assert len(backend._pool.ready()) == 2
    backend.put("rec.mp4", VerifyingReader(chunks(data), SIZE), SIZE)
    assert backend.last_upload_connections == 2
    assert (backend.base_path / "rec.mp4").read_bytes() == data


def test_a_write_refused_by_the_server_fails_the_put(parallel, monkeypatch):
    backend = parallel()
    original = ParallelUpload.__init__

    def elsewhere(self, pool, tmp, local, stall):  # the workers open a file that does not exist
        original(self, pool, tmp + "-missing", local, stall)

    monkeypatch.setattr(ParallelUpload, "__init__", elsewhere)
    with pytest.raises(StorageError, match=r"connection \d: open failed: FileNotFoundError"):
        backend.put("rec.mp4", VerifyingReader(chunks(content(SIZE)), SIZE), SIZE)
    assert not (backend.base_path / "rec.mp4").exists()
    assert leftovers(backend) == []


def test_bytes_not_acknowledged_fail_the_put(parallel, monkeypatch):
    backend = parallel()
    original = Worker.answer

    def short(self, deadline):
        answer = original(self, deadline)
        return {"done": answer["done"] - 1} if "done" in answer else answer

    monkeypatch.setattr(Worker, "answer", short)
    with pytest.raises(StorageError, match="acknowledged"):
        backend.put("rec.mp4", VerifyingReader(chunks(content(SIZE)), SIZE), SIZE)
    assert not (backend.base_path / "rec.mp4").exists()
    assert leftovers(backend) == []


@pytest.fixture
def slamming_port():
    """A port whose server accepts and hangs up at once (as sshd over MaxStartups)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.mark.parametrize("refusal", ["closed port", "hang-up", "other host key"])
def test_refused_extra_connections_fall_back_to_one(parallel, monkeypatch, slamming_port, refusal):
    from storage_backends import sftp_parallel

    original = sftp_parallel.WriterPool.__init__

    def refused(self, conf, count, where):
        if refusal == "other host key":
            conf = {**conf, "host_key": conf["host_key"][:-4] + "AAAA"}
        else:
            conf = {**conf, "port": free_port() if refusal == "closed port" else slamming_port}
        original(self, conf, count, where)

    monkeypatch.setattr(sftp_parallel.WriterPool, "__init__", refused)
    backend = parallel(wait=False)
    pool = backend._writer_pool(SIZE)
    deadline = time.monotonic() + 30
    while any(w.state == "starting" for w in pool.workers):
        pool.ready()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert {w.state for w in pool.workers} == {"dead"}
    data = content(SIZE)
    backend.put("rec.mp4", VerifyingReader(chunks(data), SIZE), SIZE)
    assert backend.last_upload_connections == 1
    assert (backend.base_path / "rec.mp4").read_bytes() == data
    if refusal == "other host key":
        assert "host key differs" in pool.refused
        assert backend._writer_pool(SIZE) is None  # never tried again for this backend


def test_small_files_start_no_worker(sftp_backend_factory):
    backend = sftp_backend_factory("rtkecdsa", archive_sftp_connections=3)
    n = 3 * MiB
    backend.put("small.mp4", VerifyingReader(chunks(content(n)), n), n)
    assert backend._pool is None and backend.last_upload_connections == 1


def test_downloads_read_more_than_64_kib_at_a_time():
    import httpx
    from httpcore._sync.http11 import HTTP11Connection

    from tasks.transfer import DOWNLOAD_READ_BYTES, download_client

    with download_client(httpx.Timeout(5.0)):
        assert HTTP11Connection.READ_NUM_BYTES >= DOWNLOAD_READ_BYTES >= 256 * 1024
