"""Ctrl-C / SIGTERM of a real `rtk-archiver archive` mid-transfer: the run stops within seconds,
aborts its uploads (no temp file), reports what it did not finish as interrupted and exits
130 / 143; its private Prefect API child is gone with it. (SIGKILL of the CLI:
tests/test_faults.py::test_sigkill_mid_transfer_then_rerun.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rtk_archiver import interrupt
from rtk_archiver.simulator import SimulatorServer, media_bytes
from tests.fixtures.processes import alive, api_child, listening

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "rtk_archiver.cli"]


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    return tmp_path_factory.mktemp("prefect-home")  # shared: the database is created once


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".rtkpart-" in p.name] if root.exists() else []


def _largest_temp(root: Path) -> int:
    sizes = [0]
    for temp in _temps(root):
        try:
            sizes.append(temp.stat().st_size)
        except FileNotFoundError:  # renamed into place (the small recording) meanwhile
            pass
    return max(sizes)


def _start_slow_run(sim: SimulatorServer, archive: Path, prefect_home: Path):
    """A CLI run whose downloads trickle at ~160 KiB/s after 256 KiB: one small recording is
    archived, a big one is mid-transfer when the caller signals, another waits its turn."""
    queued = sim.state.add_recording(file_size=20 * 1024 * 1024)
    slow = sim.state.add_recording(file_size=20 * 1024 * 1024)
    small = sim.state.add_recording(file_size=10_000)  # oldest: archived first
    faults = sim.state.faults
    faults.download_trickles = 1000
    faults.reset_after = 256 * 1024
    faults.trickle_bytes = 16 * 1024
    faults.trickle_interval = 0.1
    env = {
        **os.environ, "CLOUDFLARE_API_TOKEN": sim.token, "CLOUDFLARE_ACCOUNT_ID": sim.account_id,
        "REALTIMEKIT_APP_ID": sim.app_id, "CLOUDFLARE_BASE_URL": sim.base_url,
        "PREFECT_HOME": str(prefect_home), "ARCHIVE_MAX_CONCURRENT": "1", "ARCHIVE_CHUNK_SIZE": str(64 * 1024),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    env.pop("PREFECT_API_URL", None)
    cmd = [*CLI, "archive", "--destination", f"file://{archive}"]
    # a process group of its own, as a terminal's foreground job: Ctrl-C reaches the whole group
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        if _largest_temp(archive) > 512 * 1024 and proc.poll() is None:
            child = api_child(proc.pid)
            assert child is not None, "no private Prefect API child found"
            return proc, child, (small, slow, queued)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"the slow transfer never started: {out[-2000:]} {err[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_transfer_stops_cleanly_and_reports_interrupted(tmp_path, prefect_home, signum):
    archive = tmp_path / "archive"
    with SimulatorServer() as sim:
        proc, (api_pid, api_port), (small, slow, queued) = _start_slow_run(sim, archive, prefect_home)
        signalled = time.monotonic()
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)  # a terminal's Ctrl-C: every process of the foreground group
        else:  # a service manager's stop: SIGTERM to every process of the unit, its API child too
            proc.send_signal(signum)
            os.kill(api_pid, signum)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"still running 60 s after {signum.name}: {err[-3000:]}")
        took = time.monotonic() - signalled
    assert proc.returncode == 128 + signum, (proc.returncode, out[-3000:], err[-3000:])
    assert took < 18, f"{signum.name} took {took:.1f} s to stop the run"
    assert not _temps(archive), "an aborted upload left its temp file"
    assert (archive / small["output_file_name"]).read_bytes() == media_bytes(small["id"], "video", 0, small["file_size"])
    assert not (archive / slow["output_file_name"]).exists() and not (archive / queued["output_file_name"]).exists()
    assert f"INTERRUPTED by {signum.name}: 2 recording(s) not archived" in out, out[-3000:]
    rows = [line for line in out.splitlines() if line.startswith("│ interrupted")]
    assert len(rows) == 2, out[-3000:]
    assert "Error logging to API" not in out + err and "ConnectError" not in out + err, err[-3000:]
    assert not alive(api_pid) and not listening(api_port)


# --- the stop request inside one process -----------------------------------------------------

@pytest.fixture
def stop_request():
    interrupt.reset()
    yield interrupt.request
    interrupt.reset()


def test_a_stop_request_aborts_a_download_between_reads(simulator, stop_request):
    import logging

    from tasks.transfer import Download

    rec = simulator.state.add_recording(file_size=4 * 1024 * 1024)
    simulator.state.faults.download_trickles = 1
    simulator.state.faults.reset_after = 1024 * 1024
    simulator.state.faults.trickle_interval = 0.05
    view = simulator.state.view(simulator.state.recordings[rec["id"]])
    with httpx.Client(timeout=30) as http:
        download = Download(http, view["download_url"], kind="video", expected_size=rec["file_size"], url_expiry=None,
                            refresh=None, chunk_size=64 * 1024, max_resumes=3, logger=logging.getLogger("t"))
        chunks = download.chunks()
        next(chunks)
        stop_request(signal.SIGTERM)
        started = time.monotonic()
        with pytest.raises(interrupt.Interrupted, match="interrupted by SIGTERM"):
            for _ in chunks:
                pass
        assert time.monotonic() - started < 2
        download.close()


def test_a_stop_request_ends_a_read_waiting_on_a_stuck_download(stop_request):
    from rtk_archiver.streams import VerifyingReader

    release = threading.Event()

    def stuck():
        yield b"x" * 10
        release.wait(30)  # a socket read that does not return
        yield b"y"

    reader = VerifyingReader(stuck(), None, read_ahead=2)
    assert reader.read(10) == b"x" * 10
    started = time.monotonic()
    stop_request(signal.SIGINT)
    with pytest.raises(interrupt.Interrupted):
        reader.read(10)
    assert time.monotonic() - started < 1
    release.set()
    reader.close()


def test_interrupted_is_never_retried():
    from tasks.retry import is_permanent

    assert is_permanent(interrupt.Interrupted(signal.SIGINT))
    assert interrupt.is_interrupt_reason(str(interrupt.Interrupted(signal.SIGTERM)))
    assert interrupt.exit_code(signal.SIGINT) == 130 and interrupt.exit_code(signal.SIGTERM) == 143


# --- the signal watcher, in a small process of its own ---------------------------------------

WATCHER = """
import sys, threading, time
from rtk_archiver import interrupt
with interrupt.watch_signals(grace=float(sys.argv[1])):
    worker = threading.Thread(target=lambda: time.sleep(60), daemon=True)
    worker.start()  # started after: signals are not delivered to it
    print("ready", flush=True)
    while not interrupt.requested():
        time.sleep(0.01)
    print("requested", interrupt.signal_name(interrupt.received_signal()), flush=True)
    if sys.argv[2] == "wind-down":
        sys.exit(interrupt.exit_code(interrupt.received_signal()))
    time.sleep(60)  # a run that does not wind down
"""


def _watcher(grace: float, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", WATCHER, str(grace), mode], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_the_first_signal_is_a_stop_request_the_second_exits_at_once():
    proc = _watcher(60, "hang")
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "requested SIGTERM"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(10)
    assert proc.returncode == 130 and time.monotonic() - started < 5
    assert "SIGINT again: exiting at once" in proc.stderr.read()


def test_a_run_that_does_not_wind_down_is_ended_after_the_grace_period():
    proc = _watcher(1.5, "hang")
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(20)
    assert proc.returncode == 130 and time.monotonic() - started < 10
    assert "did not stop within 2 s of SIGINT" in proc.stderr.read()


def test_a_run_that_winds_down_exits_with_128_plus_the_signal():
    proc = _watcher(30, "wind-down")
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert proc.returncode == 143
    assert "SIGTERM received: stopping" in proc.stderr.read()
