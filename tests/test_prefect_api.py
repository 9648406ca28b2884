"""The CLI's private Prefect API: a child process, stopped with the run, never imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from rtk_archiver.memory import tune_malloc
from rtk_archiver.prefect_api import private_prefect_api

REPO = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import sys, httpx
    from rtk_archiver.prefect_api import private_api_active, private_prefect_api
    with private_prefect_api() as url:
        assert url and private_api_active()
        assert httpx.get(url + "/health").status_code == 200
        from prefect.settings import get_current_settings
        assert get_current_settings().api.url == url
        from tasks.limits import shared_limits_available
        assert not shared_limits_available()  # one run's own server: nothing to share
        import flows.archive  # noqa: F401
        assert "prefect.server.api.server" not in sys.modules  # the server stays in its process
    print(url)
    """
)


@pytest.mark.slow
def test_private_api_runs_in_a_child_process_and_stops_with_the_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    url = proc.stdout.strip().splitlines()[-1]
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=2)


def test_a_configured_server_is_used_as_it_is(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    with private_prefect_api() as url:
        assert url is None
        assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"


def test_malloc_bounds_are_left_to_explicit_settings(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert tune_malloc() is False


@pytest.mark.slow
def test_the_demo_on_its_private_api_exits_promptly_with_every_log_sent(tmp_path):
    """`make demo` path: the run's logs are sent before its API server stops (they were
    retried against the stopped server for a minute, with an error on the console, after the
    demo's last line). Timed from the last line to the exit, so that a busy machine's slow
    run does not count; the whole demo is bounded loosely."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "ARCHIVE_", "CLOUDFLARE_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cli = Path(sys.executable).parent / "rtk-archiver"
    started = time.monotonic()
    proc = subprocess.Popen([str(cli), "demo", "--dir", str(tmp_path / "archive"), "--count", "4"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, last_line_at = [], started
    try:
        for line in proc.stdout:  # until the process closes its output (exits)
            lines.append(line)
            if line.strip():
                last_line_at = time.monotonic()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    exited = time.monotonic()
    out = "".join(lines)
    assert proc.returncode == 0, out[-4000:]
    assert "Error logging to API" not in out
    assert " file(s) under " in lines[-1], out[-2000:]  # the demo's last line
    assert exited - last_line_at < 20, f"the demo exited {exited - last_line_at:.0f} s after its last line"
    assert exited - started < 180, f"the demo took {exited - started:.0f} s"
