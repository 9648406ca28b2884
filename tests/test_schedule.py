"""``rtk-archiver serve`` against a real ``prefect server`` (scheduler and other services on).

- The SCHEDULER ITSELF creates the poll's runs (auto-scheduled runs of
  poll-recordings/scheduled-poll; the test creates none), they run to Completed and archive the
  simulator's stopped recordings into the default destination; a poll due while one is running
  is cancelled, not queued (CANCEL_NEW). No server service logs an error meanwhile (with
  SQLAlchemy 2.1 the scheduler failed every loop and no run was ever created).
- serve and deploy work from any directory (entrypoints were resolved against the cwd).
- SIGTERM and Ctrl-C (SIGINT to the process group) stop serve within seconds, exit status 0,
  the run in progress cancelled, nothing left running (Prefect's own handler hung).

End-to-end and slow-ish (a real server, subprocesses): ~25 s for the shared server, then
~20-40 s per test on 2 busy cores.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from rtk_archiver.serving import flow_run_processes
from tests.fixtures import free_port
from tests.fixtures.prefect_server import PrefectServer, running_serve, service_errors

POLL = "poll-recordings/scheduled-poll"
MANUAL = "archive-manual/manual"
NOW = datetime.now(timezone.utc)
FAST_RUNNER = {"PREFECT_RUNNER_POLL_FREQUENCY": "1"}  # the runner asks for due runs every second (default 10)

pytestmark = [pytest.mark.timeout(240)]


def _api(server: PrefectServer, method: str, path: str, **kw) -> httpx.Response:
    """One request to the server's API (``PrefectServer.request``: retried while busy)."""
    return server.request(method, path, timeout=10.0, **kw)


def _deployment_id(server: PrefectServer, full_name: str, timeout: float = 90.0) -> str:
    """The id of a deployment once serve/deploy has registered it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = _api(server, "GET", f"/deployments/name/{full_name}")
        if r.status_code == 200:
            return r.json()["id"]
        time.sleep(0.5)
    raise AssertionError(f"deployment {full_name} was not registered within {timeout:.0f} s")


def _runs(server: PrefectServer, deployment_id: str, since: datetime | None = None) -> list[dict]:
    body: dict = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 200}
    if since is not None:
        body["flow_runs"]["expected_start_time"] = {"after_": since.isoformat()}
    r = _api(server, "POST", "/flow_runs/filter", json=body)
    r.raise_for_status()
    return r.json()


def _wait(what: str, check, timeout: float, serve=None, interval: float = 0.5, server: PrefectServer | None = None, mark: int = 0):
    """Until ``check()`` is true; fails early if serve exits or (``server``) a service logs an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if server is not None:
            _no_service_errors(server, mark)
        if serve is not None and serve.proc.poll() is not None:
            raise AssertionError(f"serve exited with {serve.proc.returncode} while waiting for {what}:\n{serve.log_text()[-4000:]}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}" + (f":\n{serve.log_text()[-4000:]}" if serve else ""))


def _table(runs: list[dict]) -> str:
    return "\n".join(
        f"{r['name']:24} {r['state_type']:10} {r['state_name']:24} start={r['start_time']} end={r['end_time']} "
        f"expected={r['expected_start_time']} msg={(r.get('state') or {}).get('message')!r}"
        for r in sorted(runs, key=lambda r: r["expected_start_time"])
    )


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _no_service_errors(server: PrefectServer, mark: int) -> None:
    errors = server.service_errors(since=mark)
    assert not errors, "the Prefect server logged errors:\n" + "\n".join(errors[:20]) + "\n---\n" + server.log_text()[mark:][-4000:]


def test_server_errors_leave_out_only_sqlite_contention_that_prefect_retries():
    """What every Prefect server log here is checked with: a record caused by SQLite's
    ``database is locked`` (retried by Prefect; seen in CI when serve stopped mid-run) is left
    out; any other error, and a message Prefect gave up on, counts."""
    locked = (
        "22:44:43.468 | ERROR   | prefect.server.utilities.messaging.memory - Failed in consume_loop\n"
        "Traceback (most recent call last):\n"
        "sqlite3.OperationalError: database is locked\n"
        "Traceback (most recent call last):\n"
        "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked\n"
    )
    other = (
        "22:44:44.001 | ERROR   | prefect.server.services.scheduler - Unexpected error in: TypeError\n"
        "Traceback (most recent call last):\n"
        "TypeError: boom\n"
    )
    gave_up = ("22:44:45.002 | WARNING | prefect.server.utilities.messaging.memory - Message failed after 4 "
               "retries and will be moved to the dead letter queue\n")
    assert service_errors(locked) == []
    assert len(service_errors(locked + other)) == 2  # the ERROR line and its traceback
    assert service_errors(locked + gave_up) == [gave_up.strip()]


def test_requests_to_the_test_server_retry_reads_that_time_out_but_never_writes(tmp_path):
    """A read the loaded server does not answer in time is asked again; a write that timed out
    may have been done, so it is not sent again (it fails)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Slow(BaseHTTPRequestHandler):
        def _answer(self):
            seen.append(self.command)
            if len(seen) == 1 or self.command == "POST":
                time.sleep(1.5)  # longer than the client's timeout
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        server = PrefectServer(api_url=f"http://127.0.0.1:{httpd.server_port}/api", port=httpd.server_port,
                               home=tmp_path, log_path=tmp_path / "log", proc=None)
        assert server.request("GET", "/flow_runs/x", timeout=0.5).status_code == 200
        assert seen == ["GET", "GET"]
        with pytest.raises(httpx.TimeoutException):
            server.request("POST", "/deployments/x/create_flow_run", timeout=0.5)
        assert seen == ["GET", "GET", "POST"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_entrypoints_are_imported_not_read_from_the_current_directory(tmp_path, monkeypatch):
    from deployments import load_flow, module_entrypoint, specs
    from rtk_archiver.settings import Settings

    monkeypatch.chdir(tmp_path)
    for spec in specs(Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b")):
        assert load_flow(spec.entrypoint).name == spec.flow_name
    assert module_entrypoint("flows/poll.py:poll_recordings") == "flows.poll.poll_recordings"
    with pytest.raises(ValueError, match="entrypoint"):
        module_entrypoint("flows.poll")


def _start_manual_run(prefect_server, recording_id: str):
    """A manual run of one recording on the server; returns a function that reads its state."""
    manual = _deployment_id(prefect_server, MANUAL)
    r = _api(prefect_server, "POST", f"/deployments/{manual}/create_flow_run",
             json={"parameters": {"request": {"recording_ids": [recording_id]}}})
    r.raise_for_status()
    run_id = r.json()["id"]

    def state() -> dict:
        return _api(prefect_server, "GET", f"/flow_runs/{run_id}").json()["state"]

    return state


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT-ctrl-c"])
def test_serve_stops_on_signal_from_any_directory(prefect_server, archiver_env, tmp_path, sig):
    """A run in progress (stuck on a slow API) is cancelled; serve exits 0 within seconds, no
    process of it left. SIGINT goes to the whole process group, as Ctrl-C in a terminal does."""
    rec = archiver_env.state.add_recording(file_size=10_000)
    archiver_env.state.faults.api_delay = 120  # the run hangs in its first API call
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    mark = prefect_server.log_size()
    with running_serve(prefect_server.api_url, cwd=elsewhere, env=FAST_RUNNER) as serve:
        state = _start_manual_run(prefect_server, rec["id"])

        _wait("the manual run to be Running", lambda: state()["type"] == "RUNNING", 90, serve)
        time.sleep(1)
        runs = flow_run_processes(serve.proc.pid)
        assert runs, "no flow-run process of serve found"
        started = time.monotonic()
        if sig == signal.SIGINT:
            os.killpg(serve.proc.pid, sig)  # Ctrl-C: the terminal signals the foreground group
        else:
            serve.proc.send_signal(sig)  # docker stop / kill: the main process only
        try:
            code = serve.proc.wait(timeout=20)
        except Exception:
            pytest.fail(f"serve still running 20 s after {sig.name}:\n{serve.log_text()[-4000:]}")
        took = time.monotonic() - started
        log = serve.log_text()
        assert code == 0, log[-4000:]
        assert took < 15, f"serve took {took:.1f} s to stop"
        assert "never awaited" not in log and "Traceback" not in log, log[-4000:]
        assert f"{sig.name} received" in log and "serve: stopped" in log
        # the run's process ended on the runner's SIGTERM, not killed as a straggler
        assert "after the stop began: killing it" not in log, log[-4000:]
        _wait("serve's flow-run processes to be gone", lambda: not any(Path(f"/proc/{pid}").exists() for pid in runs), 10)
        _wait("serve's process group to be gone", lambda: _group_gone(serve.proc.pid), 10)
        final = _wait("the run in progress to end", lambda: (s := state())["type"] not in ("RUNNING", "PENDING", "CANCELLING") and s, 20)
        assert final["type"] in ("CANCELLED", "CRASHED"), final  # never Completed: nothing was archived
        assert not any(archiver_env.archive.iterdir())
        print(f"{sig.name}: serve stopped in {took:.1f} s, the run in progress ended {final['type']}")
    # the simulator still holds the cancelled run's request (120 s delay): do not wait for it
    archiver_env._server.force_exit = True
    _no_service_errors(prefect_server, mark)


@pytest.mark.slow
def test_serve_stopped_mid_transfer_aborts_the_transfer_at_once(prefect_server, archiver_env, tmp_path):
    """SIGTERM to serve while a run transfers: the transfer is aborted at once (its temp file
    removed), the run ends Cancelled, serve exits within seconds (it waited for its 10 s kill)."""
    rec = archiver_env.state.add_recording(file_size=40_000_000)
    faults = archiver_env.state.faults
    faults.download_trickles, faults.reset_after = 1, 4_000_000  # 4 MB, then 64 KB every 0.2 s: minutes
    faults.trickle_bytes, faults.trickle_interval = 65_536, 0.2
    mark = prefect_server.log_size()
    with running_serve(prefect_server.api_url, cwd=tmp_path, env=FAST_RUNNER) as serve:
        state = _start_manual_run(prefect_server, rec["id"])

        def temp_files() -> list[Path]:
            return [p for p in archiver_env.archive.rglob("*") if p.is_file()] if archiver_env.archive.exists() else []

        _wait("the transfer to be writing its temp file", lambda: any(p.stat().st_size > 1_000_000 for p in temp_files()), 120, serve)
        runs = flow_run_processes(serve.proc.pid)
        started = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        code = serve.proc.wait(timeout=30)
        took = time.monotonic() - started
        log = serve.log_text()
        assert code == 0, log[-4000:]
        assert "after the stop began: killing it" not in log, log[-4000:]  # it ended on its SIGTERM
        assert took < 8, f"serve took {took:.1f} s to stop:\n{log[-3000:]}"
        _wait("serve's flow-run processes to be gone", lambda: not any(Path(f"/proc/{pid}").exists() for pid in runs), 10)
        assert temp_files() == [], temp_files()  # the aborted upload removed its temp file
        final = _wait("the run to end", lambda: (s := state())["type"] not in ("RUNNING", "PENDING", "CANCELLING") and s, 20)
        assert final["type"] == "CANCELLED", final
        print(f"serve stopped mid-transfer in {took:.1f} s, the run ended {final['type']}")
    _no_service_errors(prefect_server, mark)


@pytest.mark.slow
def test_the_scheduler_itself_runs_the_poll_and_archives(prefect_server, archiver_env, tmp_path):
    """No run is created here: the server's scheduler creates them from serve's schedule."""
    recs = [archiver_env.state.add_recording(file_size=20_000 + i, stopped_time=NOW - timedelta(minutes=20 + i)) for i in range(3)]
    archiver_env.state.add_recording(status="RECORDING")  # not stopped: not archived
    archiver_env.state.faults.api_delay = 0.7  # a poll outlasts the 6 s interval: the next one collides
    elsewhere = tmp_path / "elsewhere"  # serve from a directory that is not the repository
    elsewhere.mkdir()
    mark = prefect_server.log_size()
    started = time.monotonic()
    t0 = datetime.now(timezone.utc)  # the session's server is shared: only runs due from now on are this test's
    env = {**FAST_RUNNER, "ARCHIVE_POLL_INTERVAL_MINUTES": "0.1"}
    with running_serve(prefect_server.api_url, cwd=elsewhere, env=env) as serve:
        poll = _deployment_id(prefect_server, POLL)

        def archived() -> bool:
            names = {p.name for p in archiver_env.archive.iterdir()}
            return all(r["output_file_name"] in names for r in recs)

        def completed() -> list[dict]:
            return [r for r in _runs(prefect_server, poll, since=t0) if r["state_type"] == "COMPLETED"]

        _wait("a scheduled poll run to complete and archive", lambda: completed() and archived(), 80, serve,
              server=prefect_server, mark=mark)
        first_done = time.monotonic() - started
        # CANCEL_NEW: a poll due while another runs is cancelled, not queued behind it
        _wait("a colliding poll to be cancelled", lambda: any(r["state_type"] == "CANCELLED" for r in _runs(prefect_server, poll, since=t0)), 40, serve)
        runs = _runs(prefect_server, poll, since=t0)
    took = time.monotonic() - started

    assert runs and all(r["auto_scheduled"] for r in runs), [(r["name"], r["auto_scheduled"]) for r in runs]
    assert all((r["idempotency_key"] or "").startswith("scheduled ") for r in runs)
    by_state: dict[str, int] = {}
    for r in runs:
        by_state[r["state_type"]] = by_state.get(r["state_type"], 0) + 1
    assert not any(r["state_name"] == "AwaitingConcurrencySlot" for r in runs), by_state
    done = sorted((r for r in runs if r["state_type"] == "COMPLETED"), key=lambda r: r["start_time"])
    for a, b in zip(done, done[1:]):  # never two polls at once
        assert a["end_time"] <= b["start_time"], (a["name"], b["name"])
    cancelled = [r for r in runs if r["state_type"] == "CANCELLED"]
    assert cancelled, _table(runs)
    for r in cancelled:  # turned away by the deployment's limit, never ran (no time between start and end)
        assert r["state"]["message"] == "Deployment concurrency limit reached." and r["start_time"] == r["end_time"], _table(runs)
    for r in recs:
        assert (archiver_env.archive / r["output_file_name"]).stat().st_size == r["file_size"]
    assert len([p for p in archiver_env.archive.iterdir() if p.suffix == ".mp4"]) == len(recs)
    _no_service_errors(prefect_server, mark)
    print(f"first scheduled poll completed {first_done:.0f} s after serve started; {by_state}; {took:.0f} s in all")


@pytest.mark.slow
def test_serve_without_prefect_api_url_starts_a_server_whose_scheduler_runs(archiver_env, tmp_path):
    """No PREFECT_API_URL: serve starts a Prefect server with its services (Prefect's own
    fallback, an ephemeral server, has no scheduler: the poll never ran), and stops it."""
    rec = archiver_env.state.add_recording(file_size=30_000)
    port = free_port()
    home = tmp_path / "prefect-home"
    env = {**FAST_RUNNER, "ARCHIVE_POLL_INTERVAL_MINUTES": "0.1", "PREFECT_HOME": str(home),
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false"}
    started = time.monotonic()
    with running_serve(None, cwd=tmp_path, env=env) as serve:
        target = archiver_env.archive / rec["output_file_name"]
        _wait("the scheduled poll to archive", lambda: target.exists(), 200, serve, interval=1)
        took = time.monotonic() - started
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=30) == 0, serve.log_text()[-4000:]
        log = serve.log_text()
    assert f"starting a Prefect server (scheduler included) on http://127.0.0.1:{port}/api" in log
    assert target.stat().st_size == rec["file_size"]
    with pytest.raises(httpx.TransportError):  # its server stopped with it
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
    server_log = (home / "rtk-archiver-server.log").read_text(errors="replace")  # WARNING and up
    assert f"http://127.0.0.1:{port}/api" in server_log
    errors = service_errors(server_log)  # the same rule as for every Prefect server here
    assert not errors, "\n".join(errors[:20]) + "\n---\n" + server_log[-4000:]
    print(f"no PREFECT_API_URL: archived by the schedule {took:.0f} s after serve started")


@pytest.mark.slow
def test_deploy_from_any_directory(prefect_server, archiver_env, tmp_path):
    """`rtk-archiver deploy` from elsewhere registers every deployment with the project's
    entrypoints and pull step (it failed on flows/poll.py relative to the cwd)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pool = f"rtk-test-{os.getpid()}"
    with running_serve(prefect_server.api_url, "--pool", pool, cwd=elsewhere, command="deploy") as deploy:
        code = deploy.proc.wait(timeout=120)
        log = deploy.log_text()
    assert code == 0, log[-4000:]
    from deployments import PROJECT_ROOT, specs
    from rtk_archiver.settings import load_settings

    try:
        for spec in specs(load_settings()):
            assert f"deployed {spec.full_name}" in log
            dep = _api(prefect_server, "GET", f"/deployments/name/{spec.full_name}").json()
            assert dep["entrypoint"] == spec.entrypoint and dep["work_pool_name"] == pool
            assert Path(dep["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"]) == PROJECT_ROOT
            assert (PROJECT_ROOT / spec.entrypoint.split(":")[0]).is_file()
            # the workers' flow-run processes heartbeat (README, "When a run dies")
            assert dep["job_variables"] == {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500,504"}}
        assert "automation rtk-archiver-crash-dead-runs" in log
        r = _api(prefect_server, "POST", "/automations/filter", json={"automations": {"name": {"any_": ["rtk-archiver-crash-dead-runs"]}}})
        assert len(r.json()) == 1, r.text
    finally:  # the session's server is shared: leave no deployment on a pool without workers
        for spec in specs(load_settings()):
            r = _api(prefect_server, "GET", f"/deployments/name/{spec.full_name}")
            if r.status_code == 200:
                _api(prefect_server, "DELETE", f"/deployments/{r.json()['id']}")
        _api(prefect_server, "DELETE", f"/work_pools/{pool}")
