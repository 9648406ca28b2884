"""Stale-temp cleanup only ever removes temp files that are provably abandoned: never a live
upload of another run, never a file whose name is not one the archiver writes. It looks
through a directory on a process's first upload there, then at most every SWEEP_SECONDS: not
on every upload, which cost O(files in the directory) per upload."""

from __future__ import annotations

import io
import os
import posixpath
import subprocess
import sys
import time

import pytest

from rtk_archiver.settings import Settings
from storage_backends import open_backend, parse_destination_url
from storage_backends.tempnames import SWEEPS, Sweeps, temp_prefix, temp_writer


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


LOOK_ALIKES = [  # a user's files that only look like temp files: never taken for one
    ".notes.rtkpart-0123456789ab", "a.mp4.0123456789abcdef.rtkpart-0123456789ab",
    ".a.0123456789ABCDEF.rtkpart-0123456789ab", ".a.mp4.0123456789abcde.rtkpart-0123456789ab",
    ".My notes.0123456789abcdef.rtkpart-final copy", ".report.deadbeefdeadbeef.rtkpart-0123456789ab",
    ".x.0000000000000000.rtkpart-\nkeep", "." + "a" * 200 + ".0123456789abcdef.rtkpart-0123456789ab",
    ".é.0123456789abcdef.rtkpart-" + "z" * 200, ".short.0123456789abcdef.rtkpart-0123456789ab",
]


def test_temp_names_are_recognised_strictly():
    from storage_backends.local import LOCAL_WRITER
    from storage_backends.sftp import SFTP_WRITER

    for final in ("a.mp4", "x" * 150 + ".mp4", "é" * 100 + ".mp4", "Team sync.mp4.metadata.json"):
        assert temp_writer(f"{temp_prefix(final)}0123456789ab", LOCAL_WRITER) == "0123456789ab"
        assert temp_writer(f"{temp_prefix(final)}0123456789-12-abcdef01", SFTP_WRITER) == "0123456789-12-abcdef01"
        # each backend recognises its own writer part only
        assert temp_writer(f"{temp_prefix(final)}0123456789-12-abcdef01", LOCAL_WRITER) is None
        assert temp_writer(f"{temp_prefix(final)}0123456789ab", SFTP_WRITER) is None
    for other in [*LOOK_ALIKES, temp_prefix("a.mp4"), "a.mp4"]:
        assert temp_writer(other, LOCAL_WRITER) is None and temp_writer(other, SFTP_WRITER) is None, other


def test_sweeps_are_due_once_per_directory_per_interval():
    now = [0.0]
    sweeps = Sweeps(every=600, clock=lambda: now[0])
    assert sweeps.due("a") and not sweeps.due("a") and sweeps.due("b")
    now[0] = 599
    assert not sweeps.due("a")
    now[0] = 600
    assert sweeps.due("a") and not sweeps.due("a")
    sweeps.forget()
    assert sweeps.due("a") and sweeps.due("b")
    # temp files this process could not remove (a dropped connection), by directory
    sweeps.left_behind("a", ".x.0123456789abcdef.rtkpart-1")
    sweeps.left_behind("a", ".y.0123456789abcdef.rtkpart-2")
    assert sweeps.take_left("b") == []
    assert sweeps.take_left("a") == [".x.0123456789abcdef.rtkpart-1", ".y.0123456789abcdef.rtkpart-2"]
    assert sweeps.take_left("a") == []
    # removed by name where possible; what is still there stays known
    sweeps.left_behind("a", "gone"), sweeps.left_behind("a", "stuck")
    sweeps.remove_left("a", lambda name: name == "gone")
    assert sweeps.take_left("a") == ["stuck"]
    # a look made without asking (the archive task taking over a recording) counts as one
    now[0] = 10_000
    sweeps.mark("c")
    assert not sweeps.due("c")


def test_local_cleanup_spares_live_uploads_and_removes_abandoned_ones(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    backend = open_backend(parse_destination_url(f"file://{root}"), settings())
    name = "x" * 150 + ".mp4"
    live = root / f"{temp_prefix(name)}00000000a11e"
    other_name = root / f"{temp_prefix('x' * 150 + '.mkv')}0000000047e7"  # another final name's, abandoned
    users = root / ".x.mp4.rtkpart-mine"  # a user's file that only looks like one: never touched
    for look_alike in LOOK_ALIKES:
        (root / look_alike).write_bytes(b"a user's")
    writer = _hold_lock(live)
    try:
        other_name.write_bytes(b"another name's upload")
        users.write_bytes(b"a user's")
        old = time.time() - 3600
        os.utime(live, (old, old))
        os.utime(other_name, (old, old))
        SWEEPS.forget()  # as in a new process: its first upload here looks through the directory
        backend.put(name, io.BytesIO(b"v1"), 2)
        assert live.exists()  # its writer holds the lock: a live upload, left alone
        assert not other_name.exists()  # its writer is gone: removed, whatever its name
    finally:
        writer.kill()
        writer.wait()
    # the writer is gone (killed run). This process already looked here: it does not list the
    # directory again before SWEEP_SECONDS; the next process (or this one later) removes it at
    # once, however recent (a rerun right after a SIGKILL leaves nothing behind)
    os.utime(live)
    backend.put(name, io.BytesIO(b"v2"), 2, replace=True)
    assert live.exists()
    SWEEPS.forget()
    backend.put("another.mp4", io.BytesIO(b"v3"), 2)
    assert not live.exists() and users.read_bytes() == b"a user's"
    assert (root / name).read_bytes() == b"v2"
    assert sorted(p.name for p in root.iterdir()) == sorted([name, "another.mp4", users.name, *LOOK_ALIKES])


def test_local_uploads_do_not_list_the_directory_each_time(tmp_path, monkeypatch):
    """A directory of many files: its listing is O(files), so it is read once, not per upload."""
    import storage_backends.local as local_mod

    root = tmp_path / "root"
    root.mkdir()
    for i in range(300):
        (root / f"rec-{i:04d}.mp4").write_bytes(b"")
    scans: list[str] = []
    real_scandir = os.scandir
    def named(path) -> str:  # the backend lists a directory by its descriptor (opened without following links)
        return os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else str(path)

    monkeypatch.setattr(local_mod.os, "scandir", lambda path=".": (scans.append(named(path)), real_scandir(path))[1])
    backend = open_backend(parse_destination_url(f"file://{root}"), settings())
    SWEEPS.forget()
    for i in range(20):
        backend.put(f"new-{i}.mp4", io.BytesIO(b"v"), 1)
    # (os.scandir is the process's own: other threads' listings elsewhere are not counted)
    assert [p for p in scans if p.startswith(str(tmp_path.resolve()))] == [str(root.resolve())]


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
        "other_name": f"{temp_prefix('y' * 150 + '.mkv')}{sftp_mod._HOST_TAG}-{dead.pid}-ffffffff",  # gone too
        "users_old": ".y.mp4.rtkpart-0123456789-78-eeeeeeee",  # a user's look-alike, a day old: not ours
        "link_old": f"{temp_prefix('z.mp4')}0123456789-79-abababab",  # a symlink by that name: not ours
    }
    try:
        for key, path in files.items():
            if key != "link_old":
                (base / path).write_bytes(b"partial")
        (base / files["link_old"]).symlink_to(base / "keep.json")
        os.utime(base / files["link_old"], (day_ago := time.time() - 86400, day_ago), follow_symlinks=False)
        for look_alike in LOOK_ALIKES:  # a user's files, a day old: "another host's" rule must not take them
            (base / look_alike).write_bytes(b"a user's")
            os.utime(base / look_alike, (day_ago, day_ago))
        day_ago = time.time() - 86400
        os.utime(base / files["remote_old"], (day_ago, day_ago))
        os.utime(base / files["users_old"], (day_ago, day_ago))
        backend.put("d/other.mp4", io.BytesIO(b"x"), 1)  # this process already looked through d/
        assert all((base / v).exists() for v in files.values())
        SWEEPS.forget()  # as in the next process: its first upload into d/ looks through it
        backend.put(f"d/{name}", io.BytesIO(b"video"), 5)
        left = {k for k, v in files.items() if (base / v).is_symlink() or (base / v).exists()}
        assert left == {"live_here", "remote_new", "users_old", "link_old"}
        assert (base / name).read_bytes() == b"video"
        assert all((base / look_alike).read_bytes() == b"a user's" for look_alike in LOOK_ALIKES)
        # a dead writer's temp file that appears after this process looked: removed when asked
        # (the archive task asks when it takes over a recording an earlier attempt left unfinished)
        late = base / f"{prefix}{sftp_mod._HOST_TAG}-{dead.pid}-12345678"
        late.write_bytes(b"partial")
        backend.put("d/again.mp4", io.BytesIO(b"x"), 1)
        assert late.exists()
        backend.remove_abandoned(f"d/{name}")
        assert not late.exists() and (base / "again.mp4").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sftp_uploads_do_not_list_the_directory_each_time(sftp_backend_factory, monkeypatch):
    """Listing a directory over SFTP takes a round trip per ~100 names: it is read once per
    directory (per SWEEP_SECONDS), not per upload."""
    import paramiko

    backend = sftp_backend_factory()
    backend.put_bytes("d/keep.json", b"{}")
    for i in range(300):
        (backend.base_path / "d" / f"rec-{i:04d}.mp4").write_bytes(b"")
    listed: list[str] = []
    real = paramiko.SFTPClient.listdir_attr
    monkeypatch.setattr(paramiko.SFTPClient, "listdir_attr", lambda self, path=".": (listed.append(path), real(self, path))[1])
    SWEEPS.forget()
    for i in range(20):
        backend.put(f"d/new-{i}.mp4", io.BytesIO(b"v"), 1)
    backend.put(f"e/new.mp4", io.BytesIO(b"v"), 1)
    mine = [p for p in listed if backend.base_path.name in p]  # not another thread's listings
    assert [posixpath.basename(p) for p in mine] == ["d", "e"]


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



def test_local_cleanup_never_blocks_on_a_fifo_nor_follows_a_symlink(tmp_path):
    """Things named exactly like temp files that the archiver never writes (it writes regular
    files only): a FIFO is not opened for a read that would block, a symlink is not followed."""
    import threading

    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"not the archiver's")
    fifo = root / f"{temp_prefix('a.mp4')}00000000f1f0"
    link = root / f"{temp_prefix('b.mp4')}000000001112"
    os.mkfifo(fifo)
    link.symlink_to(outside)
    backend = open_backend(parse_destination_url(f"file://{root}"), settings())
    SWEEPS.forget()
    done = threading.Thread(target=backend.put, args=("c.mp4", io.BytesIO(b"c"), 1), daemon=True)
    done.start()
    done.join(10)
    if done.is_alive():
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # lets the blocked open return, then fail
        pytest.fail("the cleanup blocked opening a FIFO")
    assert (root / "c.mp4").read_bytes() == b"c"
    assert fifo.exists() and link.is_symlink() and outside.read_bytes() == b"not the archiver's"


def test_a_writer_in_another_pid_namespace_counts_as_another_hosts():
    """Two containers on one host can share the hostname and the boot id, not their pids: the
    SFTP temp names' host tag includes the PID namespace, so a live upload there is never
    taken for a dead process of this host."""
    import shutil

    from storage_backends import sftp as sftp_mod

    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    code = "import storage_backends.sftp as s; print(s._HOST_TAG)"
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    if done.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {done.stderr.strip()[-200:]}")
    same = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert same.stdout.strip() == sftp_mod._HOST_TAG  # this namespace: the same tag
    assert done.stdout.strip() != sftp_mod._HOST_TAG
