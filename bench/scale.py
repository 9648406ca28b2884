"""Proven at scale: a backfill of 10,000 small recordings (16 KiB, spread over 10 days) through
a Prefect server on PostgreSQL (Debian's postgresql, started here) with a process work pool of
two workers (``prefect worker start --limit 4``), the deployments of deployments/prefect.yaml,
archiving into ``file://``.

Checks every recording archived exactly once (its video at its name with its size, its sidecar
complete and naming it, nothing else in the destination, one download per file as the
simulator counted them). Measures the total time (request to final state), recordings/s,
peak RSS of the server, PostgreSQL and each worker (process trees: a worker with its flow-run
processes), CPU seconds per component (where the time goes), the API's latency during the run
(``GET /api/health`` and a read, ``POST /api/flow_runs/filter``, every 0.5 s), the number of
flow and task runs and the database's size. Needs root (PostgreSQL runs as ``postgres``).

    python -m bench.scale [--count 10000] [--size 16K] [--days 10] [--workers 2] [--limit 4] [--parallelism 4]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from bench.backfill import Api, archived
from bench.common import simulator
from bench.common import BIN, REPO, free_port, parse_size, save
from rtk_archiver.prefect_api import wait_healthy
from tests.fixtures.postgres import postgres_unavailable, running_postgresql

CLK = os.sysconf("SC_CLK_TCK")


@contextmanager
def postgresql() -> Iterator[tuple[str, int]]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (the one tests/test_scale_out.py uses); yields
    (SQLAlchemy URL, postmaster pid)."""
    reason = postgres_unavailable()
    if reason:
        raise SystemExit(f"bench.scale {reason}")
    with running_postgresql("rtk-bench-pg-") as found:
        yield found


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU s, CPU s of waited-for children) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK, (int(fields[13]) + int(fields[14])) / CLK


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class Sampler(threading.Thread):
    """Every second: RSS and CPU of each named process tree; every 0.5 s: API latency."""

    def __init__(self, api_url: str) -> None:
        super().__init__(daemon=True)
        self.api_url = api_url
        self.roots: dict[str, int] = {}
        self.peak_tree_mib: dict[str, float] = {}
        self.peak_root_mib: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.latency: dict[str, list[float]] = {"health": [], "read": []}
        self.errors = 0
        self.stopping = threading.Event()

    def _trees(self) -> dict[str, list[int]]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = _stat(int(entry))
                if st:
                    children.setdefault(st[0], []).append(int(entry))
        trees = {}
        for name, root in self.roots.items():
            todo, seen = [root], []
            while todo:
                pid = todo.pop()
                seen.append(pid)
                todo.extend(children.get(pid, []))
            trees[name] = seen
        return trees

    def sample_processes(self) -> None:
        for name, pids in self._trees().items():
            rss = [_rss_kib(p) for p in pids]
            self.peak_tree_mib[name] = max(self.peak_tree_mib.get(name, 0.0), sum(rss) / 1024)
            self.peak_root_mib[name] = max(self.peak_root_mib.get(name, 0.0), (rss[0] if rss else 0) / 1024)
            cpu = 0.0
            for i, pid in enumerate(pids):
                st = _stat(pid)
                if st:
                    cpu += st[1] + (st[2] if i == 0 else 0.0)  # the root's reaped children count once
            self.cpu[name] = max(self.cpu.get(name, 0.0), cpu)

    def run(self) -> None:
        with httpx.Client(base_url=self.api_url, timeout=60) as client:
            tick = 0
            while not self.stopping.is_set():
                for what, call in (("health", lambda: client.get("/health")),
                                   ("read", lambda: client.post("/flow_runs/filter", json={"limit": 5}))):
                    t0 = time.perf_counter()
                    try:
                        call().raise_for_status()
                        self.latency[what].append(time.perf_counter() - t0)
                    except httpx.HTTPError:
                        self.errors += 1
                if tick % 2 == 0:
                    self.sample_processes()
                tick += 1
                self.stopping.wait(0.5)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=120)
        self.sample_processes()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--size", type=parse_size, default=16 * 1024)
    parser.add_argument("--days", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=4, help="flow runs at once per worker")
    parser.add_argument("--parallelism", type=int, default=4, help="the backfill's child runs at once")
    parser.add_argument("--per-window", type=int, default=None, help="the backfill's recordings_per_window (default: the flow's)")
    parser.add_argument("--transfers", type=int, default=None,
                        help="ARCHIVE_MAX_TRANSFERS_PER_BACKEND for the workers (default: the setting's default, 4)")
    parser.add_argument("--name", default="scale", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="rtk-bench-scale-") as tmp, postgresql() as (db_url, pg_pid), \
            simulator("--count", str(args.count), "--size", str(args.size), "--spread-hours", str(args.days * 24 - 1),
                      "--retention-days", str(args.days + 30)) as sim:
        tmpdir = Path(tmp)
        dest = tmpdir / "archive"
        dest.mkdir()
        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}/api"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ARCHIVE_"))}
        env.update(sim.env())
        env.update({
            "PREFECT_HOME": str(tmpdir / "prefect-home"), "PREFECT_API_URL": api_url,
            "PREFECT_API_DATABASE_CONNECTION_URL": db_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1", "PREFECT_UI_ENABLED": "false", "PREFECT_CLI_PROMPT": "false",
            "ARCHIVE_DEFAULT_DESTINATION": f"file://{dest}", "RTK_ARCHIVER_HOME": str(REPO),
        })
        if args.transfers:
            env["ARCHIVE_MAX_TRANSFERS_PER_BACKEND"] = str(args.transfers)
        log = open(tmpdir / "processes.log", "wb")

        def start(*cmd: str) -> subprocess.Popen:
            p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(p)
            return p

        def cli(*cmd: str) -> None:
            subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)

        sampler = Sampler(api_url)
        run: dict | None = None
        try:
            server = start(str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(api_port))
            wait_healthy(server, api_url, timeout=300, what="prefect server on PostgreSQL",
                         tail=lambda: (tmpdir / "processes.log").read_text(errors="replace")[-3000:], error=RuntimeError)
            cli(str(BIN / "prefect"), "work-pool", "create", "rtk-archiver", "--type", "process")
            cli(str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
            api = Api(api_url)
            for name in ("poll-recordings/scheduled-poll", "verify-archive/weekly-verify"):  # only the backfill works
                api.call("POST", f"/deployments/{api.deployment_id(name)}/pause_deployment")
            workers = [start(str(BIN / "prefect"), "worker", "start", "--pool", "rtk-archiver", "--limit", str(args.limit))
                       for _ in range(args.workers)]
            sampler.roots = {"server": server.pid, "postgresql": pg_pid, "simulator": sim.proc.pid,
                             **{f"worker {i + 1}": w.pid for i, w in enumerate(workers)}}
            sampler.start()
            now = datetime.now(timezone.utc)
            params = {"start": (now - timedelta(days=args.days, hours=2)).isoformat(), "end": (now - timedelta(hours=1)).isoformat(),
                      "parallelism": args.parallelism}
            if args.per_window:
                params["recordings_per_window"] = args.per_window
            print(f"backfill of {args.count} recordings of {args.size} bytes over {args.days:g} days, "
                  f"{args.workers} workers x {args.limit} runs, parallelism {args.parallelism}...", flush=True)
            run = api.run(api.deployment_id("backfill-recordings/backfill"), params, timeout=6 * 3600, poll=2)
            sampler.stop()
            flow_runs = api.call("POST", "/flow_runs/count", json={})
            task_runs_at_end = task_runs = api.call("POST", "/task_runs/count", json={})
            # Task runs reach the database through the server's event pipeline (task_run_recorder),
            # after the flow run has ended: how far behind it is shows in how long the count takes
            # to stop growing (unchanged for 15 s; at most 10 min)
            settle_start = last_change = time.monotonic()
            while time.monotonic() - last_change < 15 and time.monotonic() - settle_start < 600:
                time.sleep(3)
                now_count = api.call("POST", "/task_runs/count", json={})
                if now_count != task_runs:
                    task_runs, last_change = now_count, time.monotonic()
            task_runs_lag = last_change - settle_start
            window_runs = api.call("POST", "/flow_runs/filter", json={
                "flow_runs": {"deployment_id": {"any_": [api.deployment_id("archive-recordings/archive-window")]}}, "limit": 200})
            db_bytes = int(subprocess.run(
                ["runuser", "-u", "postgres", "--", "psql", "-h", "127.0.0.1", "-p", db_url.rsplit(":", 1)[1].split("/")[0],
                 "-tAc", "select pg_database_size('prefect')"], capture_output=True, text=True).stdout.strip() or 0)
        finally:
            if sampler.is_alive():
                sampler.stop()
            for p in reversed(procs):
                try:
                    os.killpg(p.pid, 15)
                except ProcessLookupError:
                    pass
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
                    p.wait()
            log.close()
        if run is None or run["state"]["type"] != "COMPLETED":  # keep the processes' log of a failed run
            keep = REPO / "bench" / "results" / f"{args.name}-processes.log"
            keep.write_bytes((tmpdir / "processes.log").read_bytes())
            print(f"the run did not complete: the processes' log is kept in {keep}")
        downloads = sim.downloads()
        ok = archived(dest, sim.ids, sim.sizes)
        files = sum(1 for p in dest.rglob("*") if p.is_file())
        submitted = (tmpdir / "processes.log").read_text(errors="replace").count("submitting flow run")
        # "Archived <id> (...) to ...: N bytes in X s": one archive task, from the start of its
        # transfer step (waits for the recording lock and the transfer slot included) to its end
        per_task = [float(m) for m in re.findall(r"bytes in ([0-9.]+) s", (tmpdir / "processes.log").read_text(errors="replace"))]
        worker_names = {line.split("'")[1] for line in (tmpdir / "processes.log").read_text(errors="replace").splitlines()
                        if "submitting flow run" in line and "'" in line}

    state = run["state"]
    seconds = run["seconds"]
    once = len(downloads) == args.count and all(n == 1 for n in downloads.values())
    exact = ok == args.count and files == 2 * args.count and once
    durations = []
    for w in window_runs:
        if w.get("start_time") and w.get("end_time"):
            durations.append((datetime.fromisoformat(w["end_time"]) - datetime.fromisoformat(w["start_time"])).total_seconds())
    result = {
        "count": args.count, "size": args.size, "days": args.days, "workers": args.workers, "limit": args.limit,
        "parallelism": args.parallelism, "per_window": args.per_window,
        "state": state["type"], "message": state.get("message"),
        "seconds": seconds, "recordings_per_second": args.count / seconds,
        "archived_checked": ok, "files": files, "downloaded_once": once, "exactly_once": exact,
        "flow_runs": flow_runs, "task_runs": task_runs, "task_runs_at_end": task_runs_at_end,
        "task_runs_recorded_seconds_after_end": round(task_runs_lag, 1), "window_runs": len(window_runs),
        "window_run_seconds": {"median": statistics.median(durations) if durations else None,
                               "max": max(durations) if durations else None},
        "workers_used": len(worker_names), "flow_runs_submitted_by_workers": submitted,
        "peak_rss_mib": {k: round(v, 1) for k, v in sampler.peak_tree_mib.items()},
        "peak_rss_root_process_mib": {k: round(v, 1) for k, v in sampler.peak_root_mib.items()},
        "cpu_seconds": {k: round(v, 1) for k, v in sampler.cpu.items()},
        "api_latency_ms": {what: {"p50": 1000 * pct(v, 0.5), "p95": 1000 * pct(v, 0.95), "max": 1000 * max(v, default=float("nan")),
                                  "samples": len(v)} for what, v in sampler.latency.items()},
        "api_errors": sampler.errors, "database_bytes": db_bytes,
        "transfers_per_backend": args.transfers or 4,
        "archive_task_seconds": {"samples": len(per_task), "median": statistics.median(per_task) if per_task else None,
                                 "p95": pct(per_task, 0.95), "max": max(per_task, default=None)},
    }
    print(f"{state['type']} in {seconds:.0f} s: {args.count / seconds:.1f} recordings/s; {ok}/{args.count} archived and "
          f"checked, {files} files, each downloaded once: {once} -> exactly once: {exact}")
    print(f"  runs: {flow_runs} flow runs ({len(window_runs)} windows, median {result['window_run_seconds']['median']} s), "
          f"{task_runs} task runs ({task_runs_at_end} recorded when it ended, all {task_runs_lag:.0f} s later); {len(worker_names)} worker(s) ran flow runs; database {db_bytes / 1e6:.0f} MB")
    print(f"  peak RSS (MiB, process trees): {result['peak_rss_mib']}")
    print(f"  CPU seconds: {result['cpu_seconds']}")
    print(f"  archive task seconds (lock and slot waits included): {result['archive_task_seconds']}")
    print(f"  API latency (ms): {result['api_latency_ms']}, errors {sampler.errors}")
    save(args.name, result)
    return 0 if exact and state["type"] == "COMPLETED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
