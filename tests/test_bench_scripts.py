"""The benchmark scripts still run (tiny sizes; their figures are not checked here: benchmarks
are scripts, see BENCHMARKS.md). bench.large needs rclone and root, so `make bench` covers it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_bench(module: str, tmp_path: Path, *args: str) -> dict:
    env = {"RTK_BENCH_RESULTS": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect-home"), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    name = module.rsplit(".", 1)[1]
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_listing_benchmark_runs(tmp_path):
    data = run_bench("bench.listing", tmp_path, "--count", "300", "--runs", "1")
    assert data["count"] == 300 and data["runs"][0]["median"] > 0


@pytest.mark.slow
def test_small_recordings_benchmark_runs_and_checks_the_rerun(tmp_path):
    data = run_bench("bench.small", tmp_path, "--count", "5", "--size", "4K")
    assert data["first"]["outcomes"] == {"archived": 5}
    assert data["rerun"]["outcomes"] == {"already archived": 5} and data["rerun"]["bytes_transferred"] == 0
    assert 0 < data["first"]["max_rss_mib"] < 1000
