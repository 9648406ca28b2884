"""A restart of ``prefect server`` in the middle of a run must not stop archiving: whatever
coordinates runs (tasks/limits.py) recovers by itself. Prefect keeps concurrency leases in the
server's memory (its default): before, the run's transfer slots and recording locks stayed
taken for good after a restart, and every later run waited for them forever."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from rtk_archiver.simulator import media_bytes
from tests.fixtures import wait_until
from tests.fixtures.prefect_server import (
    BIN,
    SERVER_DEFAULTS,
    PrefectServer,
    _clean_env,
    _stop,
    _wait_healthy,
    running_prefect_server,
    running_serve,
)
from tasks.limits import TRANSFER_LIMIT

NOW = datetime.now(timezone.utc)
DEPLOYMENT = "archive-recordings/archive-window"


def restart(server: PrefectServer) -> None:
    """Stop the server (SIGTERM) and start it again: same port, same PREFECT_HOME and database."""
    _stop(server.proc)
    env = _clean_env({**SERVER_DEFAULTS, "PREFECT_HOME": str(server.home)})
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(server.port)]
    with open(server.log_path, "ab") as log:
        server.proc = subprocess.Popen(cmd, env=env, cwd=server.home.parent, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
    _wait_healthy(server)


def final_state(client, run_id, timeout: float):
    def done():
        state = client.read_flow_run(run_id).state
        return state if state is not None and state.is_final() else None

    return wait_until(done, timeout=timeout, what=f"flow run {run_id} to end")


@pytest.mark.slow
@pytest.mark.timeout(600)  # two server starts on a loaded machine can take minutes
def test_a_server_restart_mid_run_leaks_nothing_and_the_next_run_completes(archiver_env, tmp_path, monkeypatch):
    import tests.fixtures.prefect_server as fixture

    monkeypatch.setattr(fixture, "STARTUP_TIMEOUT_SECONDS", 300.0)  # a loaded CI machine: starting is slow
    env, root = archiver_env, archiver_env.archive
    recs = [env.state.add_recording(file_size=300_000 + 1000 * i, stopped_time=NOW - timedelta(hours=3, minutes=i))
            for i in range(16)]
    faults = env.state.faults  # ~0.5 s per download: the run is transferring when the server goes
    faults.download_trickles, faults.reset_after, faults.trickle_bytes, faults.trickle_interval = 1000, 0, 32 * 1024, 0.05
    params = {"since": (NOW - timedelta(hours=4)).isoformat(), "until": (NOW - timedelta(hours=2)).isoformat()}
    with running_prefect_server(tmp_path / "server") as server, \
            running_serve(server.api_url, cwd=tmp_path, env={"ARCHIVE_MAX_CONCURRENT": "4",
                                                             "PREFECT_RUNNER_POLL_FREQUENCY": "1"}) as serve, \
            temporary_settings({PREFECT_API_URL: server.api_url}):
        with get_client(sync_client=True) as client:
            deployment = wait_until(lambda: _deployment(client), timeout=90, what="serve's deployments")
            first = client.create_flow_run_from_deployment(deployment, parameters=params)
        # mid-run: some recordings archived, transfers in flight
        wait_until(lambda: 2 <= len(list(root.glob("*.metadata.json"))), timeout=60, what="the first run to start archiving")
        started = time.monotonic()
        restart(server)
        restarted_in = time.monotonic() - started
        with get_client(sync_client=True) as client:
            # a new run over the same range completes unaided (it waits for what the first run,
            # if it is still going, is archiving, and takes over what a dead run left)
            second = client.create_flow_run_from_deployment(deployment, parameters=params)
            again = final_state(client, second.id, timeout=120)
            assert again.is_completed(), (again.name, again.message, serve.log_text()[-3000:])
            # and no transfer slot stays taken (the first run's lease died with the old server)
            limit = TRANSFER_LIMIT.format(kind="file")
            wait_until(lambda: client.read_global_concurrency_limit_by_name(limit).active_slots == 0, timeout=60,
                       what=lambda: f"{limit} to be free: {client.read_global_concurrency_limit_by_name(limit)}")
            state = client.read_flow_run(first.id).state
        print(f"server restarted in {restarted_in:.1f} s; first run: {state.name}; second run: {again.name}")
    for r in recs:  # every recording archived once, intact, at its own name
        assert (root / r["output_file_name"]).read_bytes() == media_bytes(r["id"], "video", 0, r["file_size"])
        sidecar = json.loads((root / (r["output_file_name"] + ".metadata.json")).read_text())
        assert sidecar["state"] == "complete" and sidecar["recording_id"] == r["id"]
    assert sorted(p.name for p in root.glob("*.mp4")) == sorted(r["output_file_name"] for r in recs)
    assert not [p for p in root.rglob("*") if ".rtkpart-" in p.name]


def _deployment(client):
    try:
        return client.read_deployment_by_name(DEPLOYMENT).id
    except Exception:  # noqa: BLE001 - serve has not registered it yet
        return None
