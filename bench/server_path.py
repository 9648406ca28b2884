"""The Prefect server path against the CLI path, side by side, for the same recordings.

* **CLI**: ``rtk-archiver archive --since S --until U --destination file://A`` (its own private
  Prefect API; the whole command's wall time, Python and Prefect start included).
* **server**: a real ``prefect server start`` (SQLite, default settings) and ``rtk-archiver
  serve`` against it; one run of the ``archive-recordings/archive-window`` deployment over
  the same window to ``file://B``: from the run's creation (what a click in the UI does) to
  its final state, as seen by a client polling the API every 0.1 s. Also recorded: the run's
  own duration on the server (start -> end).

Two workloads: 1,000 x 64 KiB and 100 x 1 MiB (video only), each in its own simulator,
Prefect server and serve; ``--runs`` runs of each path in alternating order (CLI first, then
server first, ...), every run into a fresh directory. Both paths use the same settings
(``ARCHIVE_API_REQUESTS_PER_SECOND=50`` on both: the shared API rate limit applies on the
server path only, the CLI has nothing to share it with). Target: server / CLI <= 1.3.

    python -m bench.server_path [--runs 1] [--workloads small,large] [--small 1000x64K] [--large 100x1M]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.common import BIN, archiver_env, checked, measure, median, parse_size, save, simulator

TARGET_RATIO = 1.3
DEPLOYMENT = "archive-recordings/archive-window"
RATE = "50"  # requests/s on both paths (see the docstring)


def workload(text: str) -> tuple[int, int]:
    count, size = text.lower().split("x")
    return int(count), parse_size(size)


def archived_files(archive: Path) -> tuple[int, int]:
    videos = [p for p in archive.rglob("*.mp4")]
    return len(videos), sum(p.stat().st_size for p in videos)


def cli_run(env: dict[str, str], since: str, until: str, archive: Path, report: Path) -> dict:
    cmd = [str(BIN / "rtk-archiver"), "archive", "--since", since, "--until", until,
           "--destination", f"file://{archive}", "--report", str(report)]
    m = checked(measure(cmd, env), "rtk-archiver archive")
    kinds: dict[str, int] = {}
    for o in json.loads(report.read_text())["outcomes"]:
        kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
    return {"seconds": round(m.seconds, 2), "outcomes": kinds}


def server_run(client, deployment_id, since: str, until: str, archive: Path, timeout: float = 1800) -> dict:
    params = {"since": since, "until": until, "destination": f"file://{archive}"}
    started = time.perf_counter()
    run = client.create_flow_run_from_deployment(deployment_id, parameters=params)
    deadline = time.monotonic() + timeout
    while True:
        current = client.read_flow_run(run.id)
        if current.state is not None and current.state.is_final():
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server run {run.id} did not finish in {timeout} s")
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    if not current.state.is_completed():
        raise RuntimeError(f"the server run ended {current.state.name}: {current.state.message}")
    own = (current.end_time - current.start_time).total_seconds() if current.start_time and current.end_time else None
    return {"seconds": round(seconds, 2), "run_seconds": round(own, 2) if own else None, "flow_run_id": str(run.id)}


def bench_workload(label: str, count: int, size: int, runs: int, tmp: Path) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import tests.fixtures.prefect_server as fixture
    from tests.fixtures.prefect_server import running_prefect_server, running_serve

    fixture.STARTUP_TIMEOUT_SECONDS = 600.0  # a busy machine: a new server's database takes a while

    print(f"== {label}: {count} x {size} bytes, {runs} run(s) of each path")
    until = datetime.now(timezone.utc)
    since = (until - timedelta(days=1)).isoformat()
    until_s = until.isoformat()
    with simulator("--count", str(count), "--size", str(size)) as sim, running_prefect_server(tmp / "server") as server:
        cli_env = archiver_env(sim, tmp / "cli-prefect", ARCHIVE_API_REQUESTS_PER_SECOND=RATE)
        serve_env = {**sim.env(), "ARCHIVE_API_REQUESTS_PER_SECOND": RATE, "PREFECT_LOGGING_LEVEL": "WARNING",
                     "PREFECT_HOME": str(tmp / "serve-prefect"), "DO_NOT_TRACK": "1"}
        (tmp / "serve").mkdir()
        with running_serve(server.api_url, cwd=tmp / "serve", env=serve_env) as serve, \
                temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 180
            while True:
                try:
                    deployment = client.read_deployment_by_name(DEPLOYMENT)
                    break
                except Exception:  # noqa: BLE001 - not registered yet
                    if serve.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"serve did not register {DEPLOYMENT}:\n{serve.log_text()[-3000:]}")
                    time.sleep(0.5)
            # warm-ups, not measured: the CLI's new Prefect database, the server path's first run
            checked(measure([str(BIN / "rtk-archiver"), "archive", "--dry-run", "--since", "2000-01-01",
                             "--until", "2000-01-02"], cli_env), "CLI warm-up")
            server_run(client, deployment.id, "2000-01-01T00:00:00+00:00", "2000-01-02T00:00:00+00:00", tmp / "warm")
            results: dict[str, list[dict]] = {"cli": [], "server": []}
            for n in range(runs):
                order = ["cli", "server"] if n % 2 == 0 else ["server", "cli"]
                for path in order:
                    archive = tmp / f"{path}-{n}"
                    archive.mkdir()
                    if path == "cli":
                        r = cli_run(cli_env, since, until_s, archive, tmp / f"cli-{n}.json")
                    else:
                        r = server_run(client, deployment.id, since, until_s, archive)
                    files, total = archived_files(archive)
                    if files != count or total != count * size:
                        raise RuntimeError(f"{path} run {n}: {files} files, {total} bytes; expected {count} x {size}")
                    r["files"] = files
                    results[path].append(r)
                    extra = f" (the run itself {r['run_seconds']:.1f} s)" if r.get("run_seconds") else ""
                    print(f"  run {n + 1}, {path:6}: {r['seconds']:.1f} s{extra}, {files} files")
    cli = median([r["seconds"] for r in results["cli"]])
    srv = median([r["seconds"] for r in results["server"]])
    ratio = srv / cli
    print(f"  median: CLI {cli:.1f} s, server {srv:.1f} s: server/CLI = {ratio:.2f}x "
          f"(target <= {TARGET_RATIO}x: {'meets' if ratio <= TARGET_RATIO else 'MISSES'})")
    return {"count": count, "size": size, "runs": results, "cli_median_seconds": cli,
            "server_median_seconds": srv, "ratio": round(ratio, 3), "meets_target": ratio <= TARGET_RATIO}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="runs of each path per workload (alternating order)")
    parser.add_argument("--workloads", default="small,large")
    parser.add_argument("--small", type=workload, default=(1000, 64 * 1024), help="COUNTxSIZE, e.g. 1000x64K")
    parser.add_argument("--large", type=workload, default=(100, 1024 * 1024), help="COUNTxSIZE, e.g. 100x1M")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    out: dict[str, dict] = {}
    for name in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        count, size = getattr(args, name)
        with tempfile.TemporaryDirectory(prefix=f"rtk-bench-server-{name}-") as tmp:
            out[name] = bench_workload(name, count, size, args.runs, Path(tmp))
    save("server_path", {"target_ratio": TARGET_RATIO, "api_requests_per_second": float(RATE), "workloads": out})
    return 0  # a missed target is reported (printed, in the JSON), like the other benchmarks


if __name__ == "__main__":
    raise SystemExit(main())
