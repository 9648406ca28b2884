"""When a run dies (README, "When a run dies"): flow-run heartbeats on every path, the
deployments' automation that marks a run without heartbeats Crashed, and serve's flow-run
processes dying with serve.

- Fast: the automation and the heartbeat job variables are the same in deployments/ and in
  prefect.yaml; the settings refuse a crash window shorter than a heartbeat; a flow-run process
  of serve dies with serve (SIGKILL included), other processes are left alone.
- Slow, end to end (a real ``prefect server``; 118 s and 158 s measured on 2 cores under a
  load of ~20, most of it the crash window, 45 s, the shortest Prefect's minimum heartbeat
  of 30 s allows, and the dead run's recording-lock leases, 60 s): a run SIGKILLed
  mid-transfer (a CLI run against the server) ends Crashed by the automation unaided and a
  rerun archives it; ``rtk-archiver serve`` SIGKILLed mid-transfer: its flow-run process is
  gone at once, the automation marks its run Crashed unaided, and a restarted serve's rerun
  archives every recording once, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import yaml

from deployments import (
    ARCHIVER_FLOWS,
    CRASH_AUTOMATION,
    apply_crashed_runs_automation,
    crashed_runs_automation,
    job_variables,
)
from rtk_archiver.serving import flow_run_processes
from rtk_archiver.settings import Settings, SettingsError, apply_project_defaults, flow_run_env, load_settings
from rtk_archiver.simulator import media_sha256
from tests.fixtures.prefect_server import PrefectServer, running_serve

ROOT = Path(__file__).resolve().parent.parent
MANUAL = "archive-manual/manual"
TEMP_MARKER = ".rtkpart-"
# Prefect's minimum heartbeat period, and the shortest crash window the settings allow with it
FAST_DEATH = {"ARCHIVE_HEARTBEAT_SECONDS": "30", "ARCHIVE_CRASHED_AFTER_SECONDS": "45",
              "PREFECT_RUNNER_POLL_FREQUENCY": "1"}


def settings(**kw) -> Settings:
    return Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b", **kw)


# --- fast ---------------------------------------------------------------------------------------

def test_automation_and_heartbeats_match_prefect_yaml():
    from prefect.events.schemas.automations import AutomationCore

    doc = yaml.safe_load((ROOT / "deployments/prefect.yaml").read_text())
    (automation,) = doc["automations"]
    assert AutomationCore.model_validate(automation).model_dump() == crashed_runs_automation(settings()).model_dump()
    assert doc["definitions"]["work_pool"]["job_variables"] == job_variables(settings())
    assert all(d["work_pool"]["job_variables"] == job_variables(settings()) for d in doc["deployments"])
    assert job_variables(settings(archive_heartbeat_seconds=60)) == {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "60", "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500,504"}}
    trigger = crashed_runs_automation(settings(archive_crashed_after_seconds=300)).trigger
    assert trigger.within.total_seconds() == 300 and trigger.posture == "Proactive"


def test_the_automation_watches_every_flow_of_the_project_and_only_them():
    import importlib
    import pkgutil

    import flows
    from prefect import Flow

    names = set()
    for mod in pkgutil.iter_modules(flows.__path__):
        module = importlib.import_module(f"flows.{mod.name}")
        names |= {v.name for v in vars(module).values() if isinstance(v, Flow)}
    assert names == set(ARCHIVER_FLOWS)
    related = crashed_runs_automation(settings()).trigger.match_related
    assert related["prefect.resource.role"] in ("flow", ["flow"]) and set(related["prefect.resource.name"]) == names


def test_heartbeat_settings_are_bounded_and_reach_prefect(monkeypatch):
    assert flow_run_env(settings()) == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500,504"}
    for key, value in {"CLOUDFLARE_API_TOKEN": "t", "CLOUDFLARE_ACCOUNT_ID": "a", "REALTIMEKIT_APP_ID": "b"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ARCHIVE_HEARTBEAT_SECONDS", "20")
    with pytest.raises(SettingsError, match="ARCHIVE_HEARTBEAT_SECONDS .*greater than or equal to 30"):
        load_settings()
    monkeypatch.setenv("ARCHIVE_HEARTBEAT_SECONDS", "60")
    monkeypatch.setenv("ARCHIVE_CRASHED_AFTER_SECONDS", "70")
    with pytest.raises(SettingsError, match="ARCHIVE_CRASHED_AFTER_SECONDS must be at least ARCHIVE_HEARTBEAT_SECONDS"):
        load_settings()
    # the CLI's in-process runs (rtk_archiver.cli applies this before Prefect is imported)
    from prefect.settings import Settings as PrefectSettings

    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "180")  # Prefect's default; restored after the test
    monkeypatch.setenv("ARCHIVE_HEARTBEAT_SECONDS", "75")
    apply_project_defaults()
    assert PrefectSettings().flows.heartbeat_frequency == 75
    monkeypatch.setenv("ARCHIVE_HEARTBEAT_SECONDS", "nonsense")  # load_settings names it; Prefect gets the default
    apply_project_defaults()
    assert PrefectSettings().flows.heartbeat_frequency == 30


# A stand-in for serve: sets what serve sets, starts a "flow-run process" (imports the flows,
# as every flow-run process does), prints its pid, then waits.
_FAKE_SERVE = """
import os, subprocess, sys, time
from rtk_archiver.serving import SERVE_PID_ENV
if sys.argv[1] == "serve":
    os.environ[SERVE_PID_ENV] = str(os.getpid())
child = subprocess.Popen([sys.executable, "-c", "import flows, os, time; "
                          "print('imported', 'own-group' if os.getpgid(0) == os.getpid() else 'parent-group', "
                          "'stdin-null' if os.readlink('/proc/self/fd/0') == '/dev/null' else 'stdin-inherited', flush=True); "
                          "time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("parent", ["serve", "not-serve"])
def test_a_flow_run_process_of_serve_dies_with_it(parent):
    """SIGKILL of serve takes its flow-run processes along (PR_SET_PDEATHSIG), which run in a
    process group of their own; a process that serve did not start (the CLI, a worker's flow
    run) is left alone."""
    proc = subprocess.Popen([sys.executable, "-c", _FAKE_SERVE, parent], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(proc.stdout.readline())
    try:
        # the child has imported the flows; serve's leaves serve's process group (a Ctrl-C in
        # serve's terminal reaches serve only, which cancels the run)
        # (and off its terminal: stdin is /dev/null)
        assert proc.stdout.readline().split() == ["imported", *(["own-group", "stdin-null"] if parent == "serve" else ["parent-group", "stdin-inherited"])]
        assert _alive(child)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + (5 if parent == "serve" else 1)
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(child) == (parent == "not-serve")
    finally:
        proc.kill()
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_serve_kills_a_flow_run_process_that_outlives_its_sigterm_and_only_those():
    """A flow-run process whose SIGTERM was lost (Prefect's handler raising inside a finalizer)
    would keep serve from stopping; serve SIGKILLs its own flow-run processes after
    STRAGGLER_SECONDS, never another child (its Prefect server) or anything else."""
    import asyncio

    from rtk_archiver.serving import SERVE_PID_ENV, _kill_stragglers_after, flow_run_processes

    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
    env = {k: v for k, v in os.environ.items() if k != SERVE_PID_ENV}
    ours = subprocess.Popen([sys.executable, "-c", deaf], env={**env, SERVE_PID_ENV: str(os.getpid())}, stdout=subprocess.PIPE)
    other = subprocess.Popen([sys.executable, "-c", deaf], env=env, stdout=subprocess.PIPE)  # like serve's Prefect server
    try:
        for p in (ours, other):
            assert p.stdout.readline().strip() == b"ready"
        ours.send_signal(signal.SIGTERM)  # lost, as in the finalizer case
        assert flow_run_processes() == [ours.pid]
        assert asyncio.run(_kill_stragglers_after(0.1)) == [ours.pid]
        assert ours.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None and flow_run_processes() == []
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


# A flow-run process's main thread inside a weakref callback when the runner's SIGTERM arrives:
# Prefect's bridge raises TerminationSignal there, and Python can only print it.
_SWALLOWED = """
import os, signal, sys, time, weakref
if sys.argv[1] == "flows":
    import flows  # as every flow-run process does
from prefect.exceptions import TerminationSignal

def bridge(signum, frame):  # what prefect.utilities.engine.capture_sigterm installs
    raise TerminationSignal(signum)

signal.signal(signal.SIGTERM, bridge)

class Resource:
    pass

def finalizer(ref):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100_000):  # the handler runs here, inside the callback
        pass

resource = Resource()
ref = weakref.ref(resource, finalizer)
try:
    del resource
    time.sleep(5)
    print("the run went on", flush=True)
except TerminationSignal:
    print("the run stopped", flush=True)
"""


@pytest.mark.parametrize("imported", ["flows", "nothing"])
def test_a_sigterm_that_lands_in_a_finalizer_is_delivered_again(imported):
    """Prefect's SIGTERM bridge raising inside a finalizer: without the flows' hook the exception
    is printed with a traceback and the signal is lost; with it, the signal is sent again and
    stops the run, no traceback."""
    run = subprocess.run([sys.executable, "-c", _SWALLOWED, imported], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "PREFECT__FLOW_RUN_ID": "00000000-0000-0000-0000-000000000000"})
    if imported == "nothing":  # the failure the hook exists for
        assert "the run went on" in run.stdout and "Exception ignored in" in run.stderr
        return
    assert run.stdout.strip() == "the run stopped", run.stderr
    assert "Traceback" not in run.stderr
    assert "SIGTERM arrived inside a finalizer, where it cannot stop the run: delivering it again" in run.stderr


def test_a_flow_run_process_whose_serve_is_already_gone_runs_nothing():
    """serve SIGKILLed between starting a flow-run process and that process following it."""
    gone = subprocess.run([sys.executable, "-c", "import flows; print('ran')"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "RTK_ARCHIVER_SERVE_PID": "1"})
    assert gone.returncode == 1 and "ran" not in gone.stdout
    assert "the serve process (1) that started this flow run is gone: not running it" in gone.stderr


# --- slow: a real server, a real serve ------------------------------------------------------------

def _api(server: PrefectServer, method: str, path: str, **kw):
    from tests.test_schedule import _api as api

    return api(server, method, path, **kw)


def _wait(what: str, check, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def _client(server: PrefectServer):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url}):
        with get_client(sync_client=True) as client:
            yield client


def _manual_run(server: PrefectServer, serve, ids: list[str]) -> str:
    from tests.test_schedule import _deployment_id

    manual = _deployment_id(server, MANUAL)
    r = _api(server, "POST", f"/deployments/{manual}/create_flow_run",
             json={"parameters": {"request": {"recording_ids": ids}}})
    r.raise_for_status()
    return r.json()["id"]


def _state(server: PrefectServer, run_id: str) -> dict:
    return _api(server, "GET", f"/flow_runs/{run_id}").json()["state"]


def _trickle(env) -> None:
    """Downloads stall after 96 KiB (1 KiB every 0.5 s after that): killed mid-transfer."""
    faults = env.state.faults
    faults.download_trickles, faults.reset_after, faults.trickle_bytes, faults.trickle_interval = 10, 96 * 1024, 1024, 0.5


def _temp_files(archive: Path) -> list[Path]:
    return [p for p in archive.iterdir() if TEMP_MARKER in p.name]


def _archived_once(archive: Path, recs: list[dict], audio: int = 0) -> None:
    """Every recording archived once, byte for byte: its video (and audio) and one complete
    sidecar naming them, nothing partial, no second copy under another name."""
    files = sorted(p.name for p in archive.iterdir())
    assert not [f for f in files if TEMP_MARKER in f], files
    assert len(files) == 2 * len(recs) + audio, files
    for rec in recs:
        video = archive / rec["output_file_name"]
        assert hashlib.sha256(video.read_bytes()).hexdigest() == media_sha256(rec["id"], "video", rec["file_size"])
        (sidecar,) = [archive / f for f in files if f.endswith(".json") and f.startswith(video.stem)]
        doc = json.loads(sidecar.read_text())
        assert doc["state"] == "complete" and doc["recording_id"] == rec["id"]
        for entry in doc["files"]:
            data = (archive / entry["name"]).read_bytes()
            assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]


def _crashed_by_the_automation(server: PrefectServer, run_id: str, timeout: float = 120) -> dict:
    state = _wait("the automation to mark the dead run Crashed",
                  lambda: (s := _state(server, run_id))["type"] != "RUNNING" and s, timeout, interval=1)
    assert state["type"] == "CRASHED" and state["message"].startswith("No heartbeat for 45 s"), state
    return state


@pytest.fixture
def dead_run_automation(prefect_server):
    """The automation, with the shortest crash window Prefect's minimum heartbeat allows;
    removed afterwards (the session's server is shared)."""
    yield
    with _client(prefect_server) as client:
        for a in client.read_automations_by_name(CRASH_AUTOMATION):
            client.delete_automation(a.id)


@pytest.mark.slow
@pytest.mark.timeout(420)  # with the session's server start (~25 s idle, 100+ s on a loaded machine)
def test_a_killed_run_ends_crashed_unaided_and_a_rerun_archives_it(prefect_server, archiver_env, tmp_path, monkeypatch,
                                                                   dead_run_automation):
    """A run SIGKILLed mid-transfer (here a CLI run against the shared server: nothing at all is
    left to report it) stayed Running for ever; the automation now marks it Crashed by itself
    within ARCHIVE_CRASHED_AFTER_SECONDS of its last heartbeat, and a rerun archives the
    recording, once, byte for byte."""
    for key, value in FAST_DEATH.items():
        monkeypatch.setenv(key, value)
    with _client(prefect_server) as client:
        apply_crashed_runs_automation(load_settings(), client)
    rec = archiver_env.state.add_recording(file_size=700_000, audio=True)
    _trickle(archiver_env)
    archive = archiver_env.archive
    env = {**os.environ, **FAST_DEATH, "PREFECT_API_URL": prefect_server.api_url,
           "PREFECT_HOME": str(tmp_path / "prefect-client-home"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "rtk_archiver.cli", "archive-one", rec["id"]]
    with open(tmp_path / "cli-1.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait("the download to be under way", lambda: _temp_files(archive) or proc.poll() is not None, 120, interval=0.2)
        assert proc.poll() is None, (tmp_path / "cli-1.log").read_text()[-3000:]
        run_id = _run_of(prefect_server, "archive-one", rec["id"])
        assert _state(prefect_server, run_id)["type"] == "RUNNING"
    finally:
        proc.kill()
    proc.wait()
    killed = time.monotonic()
    _crashed_by_the_automation(prefect_server, run_id)
    crashed_after = time.monotonic() - killed
    archiver_env.state.faults.download_trickles = 0
    rerun = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    _archived_once(archive, [rec], audio=1)
    print(f"the killed run was marked Crashed {crashed_after:.0f} s after the kill (heartbeats every 30 s, "
          f"crash window 45 s); the rerun took {time.monotonic() - killed - crashed_after:.0f} s")


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_serve_sigkilled_mid_transfer_its_runs_die_with_it_and_a_restarted_serve_archives_them_once(
        prefect_server, archiver_env, tmp_path, dead_run_automation):
    """SIGKILL of serve alone (kill -9, the OOM killer): its flow-run process went on
    transferring on its own beside the restarted serve. Now it dies with serve at once, the
    automation marks its run Crashed unaided, and the rerun on the restarted serve (asked for
    at once, as an operator would) archives every recording once, byte for byte."""
    recs = [archiver_env.state.add_recording(file_size=700_000 + i, audio=(i == 0)) for i in range(2)]
    _trickle(archiver_env)
    archive = archiver_env.archive
    with running_serve(prefect_server.api_url, cwd=tmp_path, env=FAST_DEATH, log_path=tmp_path / "serve-1.log") as serve:
        run_id = _manual_run(prefect_server, serve, [r["id"] for r in recs])
        _wait("the run to be Running with both downloads under way",
              lambda: _state(prefect_server, run_id)["type"] == "RUNNING" and len(_temp_files(archive)) >= 2, 120)
        runs = flow_run_processes(serve.proc.pid)  # each in a process group of its own (follow_serve)
        assert runs, "no flow-run process of serve found"
        log = serve.log_text()
        assert "automation rtk-archiver-crash-dead-runs" in log and "without a heartbeat for 45 s" in log, log[-3000:]
        serve.proc.kill()
        serve.proc.wait()
        killed = time.monotonic()
        try:  # no process of the dead serve goes on transferring beside the next one
            _wait("the dead serve's flow-run processes to be gone", lambda: not any(_alive(pid) for pid in runs), 10, interval=0.1)
        except AssertionError:
            for pid in runs:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"flow-run processes outlived serve's SIGKILL: {runs}") from None
    assert _state(prefect_server, run_id)["type"] == "RUNNING"  # nobody told the server
    archiver_env.state.faults.download_trickles = 0

    with running_serve(prefect_server.api_url, cwd=tmp_path, env=FAST_DEATH, log_path=tmp_path / "serve-2.log") as serve:
        rerun_id = _manual_run(prefect_server, serve, [r["id"] for r in recs])
        _crashed_by_the_automation(prefect_server, run_id)
        crashed_after = time.monotonic() - killed
        done = _wait("the rerun to end", lambda: (s := _state(prefect_server, rerun_id))["type"] in
                     ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and s, 150, interval=1)
        rerun_after = time.monotonic() - killed
        assert done["type"] == "COMPLETED", (done, serve.log_text()[-4000:])
    _archived_once(archive, recs, audio=1)
    print(f"serve SIGKILLed: its run was marked Crashed {crashed_after:.0f} s after the kill; "
          f"the rerun on the restarted serve completed {rerun_after:.0f} s after it")


def _run_of(server: PrefectServer, flow_name: str, recording_id: str) -> str:
    """The id of the latest run of ``flow_name`` whose parameters name the recording."""
    body = {"flows": {"name": {"any_": [flow_name]}}, "sort": "START_TIME_DESC", "limit": 50}
    runs = _api(server, "POST", "/flow_runs/filter", json=body).json()
    (run,) = [r for r in runs if recording_id in json.dumps(r["parameters"])][:1]
    return run["id"]


@pytest.mark.slow
def test_serve_and_deploy_apply_the_automation_idempotently(prefect_server, archiver_env, tmp_path):
    """Applied any number of times, by serve or deploy, with whatever settings: one automation,
    the last settings'."""
    with _client(prefect_server) as client:
        try:
            for a in client.read_automations_by_name(CRASH_AUTOMATION):
                client.delete_automation(a.id)
            assert apply_crashed_runs_automation(settings(), client) == "created"
            assert apply_crashed_runs_automation(settings(), client) == "unchanged"
            client.create_automation(crashed_runs_automation(settings()))  # a second one, from a race
            assert apply_crashed_runs_automation(settings(archive_crashed_after_seconds=200), client) == "updated"
            (only,) = client.read_automations_by_name(CRASH_AUTOMATION)
            assert only.trigger.within.total_seconds() == 200 and only.enabled
        finally:
            for a in client.read_automations_by_name(CRASH_AUTOMATION):
                client.delete_automation(a.id)
