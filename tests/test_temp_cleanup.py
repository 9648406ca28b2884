"""Stale-temp cleanup only ever removes temp files that are provably abandoned: never a live
upload of another run, never another name's temp file (names sharing their first characters)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest

from rtk_archiver.settings import Settings
from storage_backends import open_backend, parse_destination_url
from storage_backends.tempnames import temp_prefix


def settings() -> Settings:
    return Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b")


def test_prefixes_belong_to_exactly_one_name():
    a, b = "p" * 150 + "-1.mp4", "p" * 150 + "-2.mp4"
    assert not temp_prefix(a).startswith(temp_prefix(b)) and not temp_prefix(b).startswith(temp_prefix(a))
    assert len(temp_prefix("é" * 200).encode()) < 100


def _hold_lock(path) -> subprocess.Popen:
    """Another process writing ``path``: creates it and holds its flock, as an upload does."""
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(path)!r}, os.O_WRONLY | os.O_CREAT | os.O_EXCL)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_local_cleanup_spares_live_uploads_and_removes_abandoned_ones(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    backend = open_backend(parse_destination_url(f"file://{root}"), settings())
    name = "x" * 150 + ".mp4"
    live = root / f"{temp_prefix(name)}live"
    other_name = root / f"{temp_prefix('x' * 150 + '.mkv')}other"  # another final name's temp file
    writer = _hold_lock(live)
    try:
        other_name.write_bytes(b"another name's upload")
        old = time.time() - 3600
        os.utime(live, (old, old))
        os.utime(other_name, (old, old))
        backend.put(name, io.BytesIO(b"v1"), 2)
        assert live.exists()  # its writer holds the lock: a live upload, left alone
        assert other_name.exists()  # not this name's
    finally:
        writer.kill()
        writer.wait()
    # the writer is gone (killed run): the next write of that name removes its temp file at
    # once, however recent (a rerun right after a SIGKILL leaves nothing behind)
    os.utime(live)
    backend.put(name, io.BytesIO(b"v2"), 2, replace=True)
    assert not live.exists() and other_name.exists()
    assert (root / name).read_bytes() == b"v2"


def test_local_concurrent_writers_of_one_name_never_lose_their_temp_files(tmp_path):
    """Many writers of one final name at once: each one's cleanup runs while the others create
    and lock their temp files. None may lose its temp file (ENOENT), and none is left behind."""
    import threading

    root = tmp_path / "root"
    root.mkdir()
    backend = open_backend(parse_destination_url(f"file://{root}"), settings())
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for j in range(40):
                backend.put("same.mp4", io.BytesIO(b"x" * 10), 10, replace=True)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in root.iterdir()) == ["same.mp4"]


def test_sftp_cleanup_spares_live_uploads_and_removes_abandoned_ones(sftp_backend_factory):
    from storage_backends import sftp as sftp_mod

    backend = sftp_backend_factory()
    backend.put_bytes("d/keep.json", b"{}")  # creates the directory
    base = backend.base_path / "d"
    name = "y" * 150 + ".mp4"
    prefix = temp_prefix(name)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    files = {
        "live_here": f"{prefix}{sftp_mod._HOST_TAG}-{sleeper.pid}-aaaaaaaa",  # another process of this host, alive
        "dead_here": f"{prefix}{sftp_mod._HOST_TAG}-{dead.pid}-bbbbbbbb",  # its process is gone
        "mine_over": f"{prefix}{sftp_mod._HOST_TAG}-{os.getpid()}-cccccccc",  # this process, upload over
        "remote_new": f"{prefix}0123456789-77-dddddddd",  # another host, recently written
        "remote_old": f"{prefix}0123456789-78-eeeeeeee",  # another host, untouched for a day
        "other_name": f"{temp_prefix('y' * 150 + '.mkv')}{sftp_mod._HOST_TAG}-{dead.pid}-ffffffff",
    }
    try:
        for path in files.values():
            (base / path).write_bytes(b"partial")
        day_ago = time.time() - 86400
        os.utime(base / files["remote_old"], (day_ago, day_ago))
        backend.put(f"d/{name}", io.BytesIO(b"video"), 5)
        left = {k for k, v in files.items() if (base / v).exists()}
        assert left == {"live_here", "remote_new", "other_name"}
        assert (base / name).read_bytes() == b"video"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sftp_no_clobber_rename_leaves_what_appeared_meanwhile(sftp_backend_factory):
    """A file that appears at the final name while the upload runs is not replaced."""
    from storage_backends.base import KeyTaken

    backend = sftp_backend_factory()
    backend.put_bytes("z/keep.json", b"{}")
    target = backend.base_path / "z" / "race.mp4"

    class Source(io.RawIOBase):
        sent = False

        def read(self, n=-1):
            if self.sent:
                return b""
            self.sent = True
            target.write_bytes(b"someone else's")  # appears mid-upload
            return b"archiver bytes"

    with pytest.raises(KeyTaken):
        backend.put("z/race.mp4", Source(), None)
    assert target.read_bytes() == b"someone else's"
    assert sorted(p.name for p in target.parent.iterdir()) == ["keep.json", "race.mp4"]

