"""Peak memory of ``rtk-archiver archive-one`` (issue 14: <= 120 MiB at any size, on every
backend; BENCHMARKS.md, "Memory"; the full figure per backend and size: ``python -m bench.large``).

Without a Prefect API the CLI runs the flow's body itself (flows/direct.py), and nothing that
run uses may import Prefect: importing it alone costs ~80 MiB, more than the transfer. The
peak is the CLI's VmHWM plus any child it started (there is none on this path), sampled from
outside while it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import measure_tree
from rtk_archiver.simulator import SimulatorServer

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
RSS_LIMIT_MIB = 120.0
SIZE = 192 * MiB  # big enough that buffers kept per MiB transferred would show


def _env(sim: SimulatorServer, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "ARCHIVE_", "SFTP_"))}
    env.update(
        CLOUDFLARE_API_TOKEN=sim.token, CLOUDFLARE_ACCOUNT_ID=sim.account_id, REALTIMEKIT_APP_ID=sim.app_id,
        CLOUDFLARE_BASE_URL=sim.base_url, PREFECT_HOME=str(tmp / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
        ARCHIVE_CREDENTIAL_BLOCKS="false", PREFECT_LOGGING_LEVEL="WARNING",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra,
    )
    return env


def test_the_run_without_a_prefect_api_imports_no_prefect():
    """Everything archive-one imports on its direct path (the CLI, the flow body, the tasks,
    every backend) without Prefect; failing this costs ~80 MiB of every run's peak."""
    code = (
        "import sys\n"
        "import rtk_archiver.cli, flows.archiving, flows.direct, tasks.archive\n"
        "import storage_backends.local, storage_backends.s3, storage_backends.gcs, storage_backends.azure, storage_backends.sftp\n"
        "loaded = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "assert not loaded, loaded[:10]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


#: backend -> (the fixture that points the environment at its server and yields the bucket, URL scheme)
SERVERS = {"s3": ("s3_env", "s3"), "gcs": ("gcs_env", "gs"), "azure": ("azure_env", "az")}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "s3", "gcs", "azure"])
def test_archive_one_peak_memory_stays_under_the_limit(backend, tmp_path, request):
    """A 192 MiB recording archived by the CLI (its own process, no Prefect API) peaks at no
    more than RSS_LIMIT_MIB: to a local directory, S3 (moto: parts in flight), GCS (the
    emulator: one resumable-upload chunk after another) and Azure (Azurite: blocks in flight).
    The servers' variables (AWS_*, STORAGE_EMULATOR_HOST, AZURE_STORAGE_CONNECTION_STRING) are
    set by their fixtures and passed on."""
    if backend == "file":
        destination = f"file://{tmp_path / 'archive'}"
        (tmp_path / "archive").mkdir()
    else:
        fixture, scheme = SERVERS[backend]
        destination = f"{scheme}://{request.getfixturevalue(fixture)}/mem"
    with SimulatorServer() as sim:
        rec = sim.state.add_recording(file_size=SIZE, audio=False)
        cmd = [sys.executable, "-m", "rtk_archiver.cli", "archive-one", rec["id"], "--destination", destination]
        # the process's VmHWM, or the largest sum of its and its descendants' PSS (a private
        # Prefect server would count), sampled every 10 ms (the benchmark's own measure)
        measured, peak, _ = measure_tree(cmd, _env(sim, tmp_path), timeout=240, cwd=ROOT)
    code, output = measured.returncode, measured.output
    assert code == 0, output[-3000:]
    assert "1 archived" in output, output[-3000:]
    assert peak <= RSS_LIMIT_MIB, f"archive-one of {SIZE // MiB} MiB to {backend} peaked at {peak:.0f} MiB (limit {RSS_LIMIT_MIB:.0f})"
