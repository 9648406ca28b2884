"""Proof of scale-out: a real `prefect server` on PostgreSQL, a process work pool with two
workers, the deployments from deployments/prefect.yaml, and a backfill whose windows overlap
with a concurrent manual run. Every stopped recording must be archived exactly once (one
download per file, counted by the simulator), byte for byte."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from rtk_archiver.simulator import SimulatorServer, media_bytes
from tests.fixtures import free_port
from tests.fixtures.postgres import postgres_unavailable, running_postgresql

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NOW = datetime.now(timezone.utc)



def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def postgres():
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with running_postgresql() as (url, _pid):
        yield url


@pytest.mark.slow
@pytest.mark.timeout(600)  # a PostgreSQL-backed server, two workers, ~70 runs: minutes on a loaded machine
def test_two_workers_backfill_and_manual_run_archive_each_recording_once(postgres, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}/api"
    procs: list[subprocess.Popen] = []
    with SimulatorServer() as sim:
        recs = [
            sim.state.add_recording(file_size=150_000 + 7919 * i, audio=(i % 3 == 0), stopped_time=NOW - timedelta(days=3, hours=2 * i))
            for i in range(24)
        ]
        env = {
            **os.environ,
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_API_URL": api_url,
            "PREFECT_API_DATABASE_CONNECTION_URL": postgres,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_CLI_PROMPT": "false",
            "CLOUDFLARE_API_TOKEN": sim.token,
            "CLOUDFLARE_ACCOUNT_ID": sim.account_id,
            "REALTIMEKIT_APP_ID": sim.app_id,
            "CLOUDFLARE_BASE_URL": sim.base_url,
            "ARCHIVE_DEFAULT_DESTINATION": f"file://{archive}",
            "ARCHIVE_RETRY_DELAY_SECONDS": "1",
            "RTK_ARCHIVER_HOME": str(ROOT),
        }
        log = open(tmp_path / "processes.log", "wb")

        def start(*cmd: str) -> subprocess.Popen:
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(p)
            return p

        def cli(*cmd: str) -> None:
            subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=180)

        try:
            start(str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(api_port))
            wait_for(lambda: _healthy(api_url), 180, "the Prefect server on PostgreSQL")
            cli(str(BIN / "prefect"), "work-pool", "create", "rtk-archiver", "--type", "process")
            cli(str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
            for _ in range(2):
                start(str(BIN / "prefect"), "worker", "start", "--pool", "rtk-archiver", "--limit", "4")

            from prefect.client.orchestration import get_client
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
                # the schedule is not part of this test: pause it so only the two runs below work
                client.pause_deployment(client.read_deployment_by_name("poll-recordings/scheduled-poll").id)
                backfill = client.read_deployment_by_name("backfill-recordings/backfill")
                manual = client.read_deployment_by_name("archive-manual/manual")
                runs = [
                    client.create_flow_run_from_deployment(
                        backfill.id,
                        parameters={"start": (NOW - timedelta(days=5)).isoformat(), "end": (NOW - timedelta(days=1)).isoformat(),
                                    "window_hours": 12, "parallelism": 4},
                    ),
                    client.create_flow_run_from_deployment(
                        manual.id, parameters={"request": {"recording_ids": [r["id"] for r in recs[::2]]}}
                    ),
                ]

                def finished():
                    states = [client.read_flow_run(r.id).state for r in runs]
                    return states if all(s and s.is_final() for s in states) else None

                states = wait_for(finished, 400, "the backfill and the manual run")
                assert all(s.is_completed() for s in states), [(s.name, s.message) for s in states]
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
            log.close()

        # both workers ran flow runs (more runs at once than one worker's --limit 4 allows)
        submitted = re.findall(r"Worker '([^']+)' submitting flow run", (tmp_path / "processes.log").read_text())
        assert len(set(submitted)) == 2, submitted
        for r in recs:
            video = archive / r["output_file_name"]
            assert video.read_bytes() == media_bytes(r["id"], "video", 0, r["file_size"])
            assert sim.state.downloads[(r["id"], "video")] == 1, r["id"]
            if r["audio_download_url"]:
                assert sim.state.downloads[(r["id"], "audio")] == 1
        assert not [p for p in archive.rglob("*") if ".rtkpart-" in p.name]


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
