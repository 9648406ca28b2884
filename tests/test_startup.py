"""`rtk-archiver archive-one` without a Prefect server configured runs its flow's body in the
CLI process (flows/direct.py): no private Prefect API server, the same outcomes, report,
exit codes and signal handling as a run on Prefect's engine. (BENCHMARKS.md, "CLI start-up";
the figure: ``python -m bench.startup``.)"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtk_archiver.simulator import SimulatorServer, media_bytes
from tests.fixtures.processes import api_child

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "rtk_archiver.cli"]
#: CPU seconds (user + system, the CLI and every child it waited for) of archive-one of a
#: small recording: ~2.5 s without a private API server, ~12 s with one (the server's import
#: and start alone are ~6 s). CPU time, not wall time: this machine's load makes wall time
#: swing 10x, CPU time much less.
CPU_BOUND_SECONDS = 6.0


def _cli_env(sim: SimulatorServer, prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "ARCHIVE_", "SFTP_", "AWS_"))}
    env.update(
        CLOUDFLARE_API_TOKEN=sim.token, CLOUDFLARE_ACCOUNT_ID=sim.account_id, REALTIMEKIT_APP_ID=sim.app_id,
        CLOUDFLARE_BASE_URL=sim.base_url, PREFECT_HOME=str(prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra,
    )
    return env


def _run_measured(cmd: list[str], env: dict[str, str]) -> tuple[int, str, float, float]:
    """(exit status, output, wall seconds, CPU seconds of the process and its waited-for children)."""
    out_path = Path(env["PREFECT_HOME"]).parent / f"out-{time.monotonic_ns()}.txt"
    with open(out_path, "w+") as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return proc.returncode, out.read(), wall, usage.ru_utime + usage.ru_stime


def test_archive_one_starts_no_prefect_server_and_stays_within_its_cpu_bound(tmp_path):
    """Used to start a private Prefect API server per run (~9 s on an idle machine, ~12 s of CPU)."""
    home = tmp_path / "prefect"
    archive = tmp_path / "archive"
    with SimulatorServer() as sim:
        rec = sim.state.add_recording(file_size=64 * 1024, audio=True)
        cmd = [*CLI, "archive-one", rec["id"], "--destination", f"file://{archive}", "--report", str(tmp_path / "r.json")]
        code, output, wall, cpu = _run_measured(cmd, _cli_env(sim, home))
    assert code == 0, output[-3000:]
    assert (archive / rec["output_file_name"]).read_bytes() == media_bytes(rec["id"], "video", 0, 64 * 1024)
    sidecar = json.loads((archive / f"{rec['output_file_name']}.metadata.json").read_text())
    assert sidecar["state"] == "complete" and len(sidecar["files"]) == 2
    report = json.loads((tmp_path / "r.json").read_text())
    assert [o["kind"] for o in report["outcomes"]] == ["archived"]
    assert "│ archived" in output and "1 archived" in output
    # no Prefect server ever ran: none created its database in PREFECT_HOME
    assert not list(home.rglob("*.db")), sorted(p.name for p in home.rglob("*"))
    assert cpu <= CPU_BOUND_SECONDS, f"archive-one used {cpu:.1f} s of CPU ({wall:.1f} s wall)"


def test_archive_one_without_prefect_api_is_interrupted_cleanly(tmp_path):
    """Ctrl-C mid-transfer: exit 130, nothing partial kept, the recording reported interrupted,
    no child process left (tests/test_interrupt.py covers `archive` on its private API)."""
    archive = tmp_path / "archive"
    with SimulatorServer() as sim:
        rec = sim.state.add_recording(file_size=8 * 1024 * 1024)
        faults = sim.state.faults
        faults.download_trickles, faults.reset_after = 1000, 256 * 1024
        faults.trickle_bytes, faults.trickle_interval = 16 * 1024, 0.1
        env = _cli_env(sim, tmp_path / "prefect", ARCHIVE_CHUNK_SIZE=str(64 * 1024))
        cmd = [*CLI, "archive-one", rec["id"], "--destination", f"file://{archive}"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not any(".rtkpart-" in p.name and p.stat().st_size > 300 * 1024 for p in _files(archive)):
                assert proc.poll() is None and time.monotonic() < deadline, "the transfer never started"
                time.sleep(0.05)
            assert api_child(proc.pid) is None  # no private API server
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, (proc.returncode, out[-3000:], err[-3000:])
    assert not [p for p in _files(archive) if ".rtkpart-" in p.name or p.name == rec["output_file_name"]]
    assert "INTERRUPTED by SIGINT: 1 recording(s) not archived" in out, out[-3000:]
    assert [line for line in out.splitlines() if line.startswith("│ interrupted")]


def _files(root: Path) -> list[Path]:
    try:
        return [p for p in root.rglob("*") if p.is_file()]
    except FileNotFoundError:  # a temp file renamed or removed meanwhile
        return []


# --- which runs go without a Prefect API ------------------------------------------------------

def _args(recording_id: str = "rec-1", destination: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(command="archive-one", recording_id=recording_id, destination=destination, dry_run=False, report=None)


@pytest.fixture
def no_api(archiver_env, monkeypatch):
    """No Prefect API configured (the session's test harness may have set one in-process)."""
    from types import SimpleNamespace

    import prefect.settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(prefect.settings, "get_current_settings", lambda: SimpleNamespace(api=SimpleNamespace(url=None)))
    return archiver_env


def test_only_runs_that_cannot_need_a_credentials_block_go_without_prefect(no_api, monkeypatch):
    from rtk_archiver.cli import _runs_without_prefect_api
    from rtk_archiver.settings import load_settings

    sim = no_api
    plain = sim.state.add_recording(file_size=1000, storage_config=None)
    s3 = sim.state.add_recording(file_size=1000, storage_config={"type": "aws", "bucket": "b", "region": "us-east-1"})
    settings = load_settings()
    assert _runs_without_prefect_api(_args(plain["id"]), settings)  # the default destination: file://
    assert _runs_without_prefect_api(_args(s3["id"], destination=f"file://{sim.archive}"), settings)
    # blocks live in Prefect's database: an S3 destination keeps the private API
    assert not _runs_without_prefect_api(_args(s3["id"]), settings)
    assert not _runs_without_prefect_api(_args(plain["id"], destination="s3://bucket/x"), settings)
    assert not _runs_without_prefect_api(_args("no-such-recording"), settings)  # the usual path reports it
    monkeypatch.setenv("ARCHIVE_CREDENTIAL_BLOCKS", "false")
    assert _runs_without_prefect_api(_args(s3["id"]), load_settings())
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # a server: the run belongs there
    assert not _runs_without_prefect_api(_args(plain["id"]), settings)
    monkeypatch.delenv("PREFECT_API_URL")  # ... also when chosen in-process (a test harness)
    from types import SimpleNamespace

    import prefect.settings

    monkeypatch.setattr(prefect.settings, "get_current_settings", lambda: SimpleNamespace(api=SimpleNamespace(url="http://127.0.0.1:9/api")))
    assert not _runs_without_prefect_api(_args(plain["id"]), settings)


# --- the same outcomes as on Prefect's engine -------------------------------------------------

def _normalised(report, root: Path) -> list[tuple]:
    return sorted(
        (o.recording_id, o.kind.value, (o.reason or "").replace(str(root), "<root>"), (o.destination or "").replace(str(root), "<root>"),
         o.bytes_total, o.bytes_transferred, o.retry_later)
        for o in report.outcomes
    )


@pytest.mark.usefixtures("prefect_harness")
def test_direct_run_has_the_outcomes_of_a_prefect_run(archiver_env, monkeypatch, tmp_path, caplog):
    """The same recordings, archived by the archive-one flow on Prefect's engine into one
    directory and by its body run directly into another: the same outcomes, reasons, final
    state messages; retries of transient failures happen in both."""
    from flows import direct
    from flows.archive import RecordingsFailed, archive_one, report_of

    sim = archiver_env
    monkeypatch.setenv("ARCHIVE_API_MAX_RETRIES", "0")  # a 503 fails the task: the task's retry takes over
    ok = sim.state.add_recording(file_size=70_000, audio=True)
    errored = sim.state.add_recording(status="ERRORED")
    no_url = sim.state.add_recording(bucket_enabled=False)
    running = sim.state.add_recording(status="RECORDING", stopped_time=None)
    taken = sim.state.add_recording(file_size=1000, output_file_name="taken.mp4")
    unwritable = sim.state.add_recording(file_size=1000)
    for root in ("prefect-run", "direct-run"):
        (tmp_path / root).mkdir()
        (tmp_path / root / "taken.mp4").mkdir()  # not the archiver's: it picks another name
        (tmp_path / root / "a-file").write_text("x")  # a destination under a file: a permanent failure

    def via_prefect(rid: str, dest: str):
        state = archive_one(rid, destination=dest, return_state=True)
        return report_of(state), state.message

    def via_direct(rid: str, dest: str):
        result, message = direct.run(archive_one, 2, recording_id=rid, destination=dest, dry_run=False)
        return (result.report if isinstance(result, RecordingsFailed) else result), message

    cases = [(ok["id"], ""), (errored["id"], ""), (no_url["id"], ""), (running["id"], ""), (taken["id"], ""),
             (unwritable["id"], "/a-file/sub"), (ok["id"], "")]  # ok twice: already archived
    for rid, sub in cases:
        results = []
        for run, root in ((via_prefect, tmp_path / "prefect-run"), (via_direct, tmp_path / "direct-run")):
            sim.state.faults.api_errors = [503]  # the first get_recording fails, the retry succeeds
            report, message = run(rid, f"file://{root}{sub}")
            assert report is not None, message
            results.append((_normalised(report, root), (message or "").replace(str(root), "<root>")))
        assert results[0] == results[1], rid
    assert (tmp_path / "direct-run" / ok["output_file_name"]).read_bytes() == media_bytes(ok["id"], "video", 0, 70_000)
    assert (tmp_path / "direct-run" / "taken (2).mp4").exists() or len(list((tmp_path / "direct-run").glob("taken*.mp4"))) == 2
    failed = via_direct(unwritable["id"], f"file://{tmp_path / 'direct-run'}/a-file/sub")[0]
    assert [o.kind.value for o in failed.outcomes] == ["failed"]

    # a recording the API does not know: the run fails (no report) with Prefect's message
    state = archive_one("no-such-recording", return_state=True)
    result, message = direct.run(archive_one, 2, recording_id="no-such-recording", destination=None, dry_run=False)
    assert report_of(state) is None and isinstance(result, Exception)
    assert message == state.message, (message, state.message)


def test_a_garbage_signal_number_from_an_interrupted_wait_is_not_a_stop_request(monkeypatch):
    """CPython's sigtimedwait returns an uninitialised siginfo when EINTR meets its timeout:
    a run was reported "interrupted by signal 1198092880" under load (the demo test)."""
    import threading
    from types import SimpleNamespace

    from rtk_archiver import interrupt

    interrupt.reset()
    done = threading.Event()
    answers = iter([SimpleNamespace(si_signo=1198092880)])

    def fake_wait(signals, timeout):
        try:
            return next(answers)
        except StopIteration:
            done.set()
            return None

    def exit_now(signum, why):
        raise AssertionError(f"would exit the process: {why}")

    monkeypatch.setattr(interrupt.signal, "sigtimedwait", fake_wait)
    monkeypatch.setattr(interrupt, "_exit_now", exit_now)
    try:
        interrupt._watch(0.5, done)
        assert not interrupt.requested()
    finally:
        interrupt.reset()


def test_startup_benchmark_runs(tmp_path):
    """bench/startup.py still runs (its figure is not checked here: see BENCHMARKS.md)."""
    env = {"RTK_BENCH_RESULTS": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect-home"), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "bench.startup", "--runs", "1", "--variants", "archive-one"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "startup.json").read_text())
    one = data["results"]["this checkout: archive-one"]
    assert one["runs"] == 1 and one["seconds"] > 0 and 0 < one["max_rss_mib"] < 1000
    assert "direct run: flow returned" in [p["phase"] for p in one["phases"]]
