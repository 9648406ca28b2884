"""Backfill through a Prefect server vs the CLI: 100 recordings (512 KiB) spread over 10 days,
archived into ``file://`` by the ``backfill-recordings/backfill`` deployment (``prefect server``
+ ``rtk-archiver serve``, default settings) and by ``rtk-archiver archive --since --until`` over
the same range, side by side, alternating which goes first, each into a fresh directory.

The backfill's time runs from the request (``POST /deployments/{id}/create_flow_run``) to its
final state, as a user sees it (serve's pick-up, every ``PREFECT_RUNNER_POLL_FREQUENCY`` = 10 s,
included); the run's own duration (start to end, from the server) is reported beside it.
Target: the backfill within 1.3x of the CLI.

    python -m bench.backfill [--count 100] [--size 512K] [--days 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from bench.common import BIN, archiver_env, checked, measure, median, parse_size, save, simulator

TARGET_RATIO = 1.3
BACKFILL = "backfill-recordings/backfill"
WINDOW = "archive-recordings/archive-window"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class Api:
    """A few calls to a Prefect server's REST API (503, its database busy, is retried)."""

    def __init__(self, api_url: str, timeout: float = 60.0) -> None:
        self.client = httpx.Client(base_url=api_url, timeout=timeout)

    def call(self, method: str, path: str, **kw):
        for _ in range(60):
            r = self.client.request(method, path, **kw)
            if r.status_code != 503:
                r.raise_for_status()
                return r.json()
            time.sleep(0.5)
        r.raise_for_status()

    def deployment_id(self, name: str, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.client.get(f"/deployments/name/{name}")
            if r.status_code == 200:
                return r.json()["id"]
            time.sleep(0.5)
        raise TimeoutError(f"deployment {name} was not registered within {timeout:.0f} s")

    def run(self, deployment_id: str, parameters: dict, timeout: float = 3600.0, poll: float = 0.25) -> dict:
        """Create a flow run of the deployment and wait for its final state: the flow run
        (``seconds`` from the request to the final state seen)."""
        started = time.perf_counter()
        run = self.call("POST", f"/deployments/{deployment_id}/create_flow_run", json={"parameters": parameters})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.call("GET", f"/flow_runs/{run['id']}")
            if run["state"] and run["state"]["type"] in FINAL:
                run["seconds"] = time.perf_counter() - started
                return run
            time.sleep(poll)
        raise TimeoutError(f"flow run {run['id']} did not finish within {timeout:.0f} s")

    def child_runs(self, deployment_id: str, after: datetime) -> list[dict]:
        body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}, "expected_start_time": {"after_": after.isoformat()}},
                "limit": 200}
        return self.call("POST", "/flow_runs/filter", json=body)


def run_seconds(run: dict) -> float:
    """The run's own duration (start to end), from the server."""
    if not (run.get("start_time") and run.get("end_time")):
        return float("nan")
    return (datetime.fromisoformat(run["end_time"]) - datetime.fromisoformat(run["start_time"])).total_seconds()


def archived(directory: Path, ids: list[str], sizes: list[int]) -> int:
    """Recordings whose video (bench-NNNNN-SIZE.mp4) and complete sidecar are in ``directory``, checked."""
    count = 0
    for n, (rid, size) in enumerate(zip(ids, sizes)):
        video = directory / f"bench-{n:05d}-{size}.mp4"
        sidecar = directory / f"bench-{n:05d}-{size}.mp4.metadata.json"
        if video.is_file() and video.stat().st_size == size and sidecar.is_file():
            meta = json.loads(sidecar.read_text())
            if meta.get("state") == "complete" and meta.get("recording_id") == rid:
                count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=parse_size, default=512 * 1024)
    parser.add_argument("--days", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from tests.fixtures.prefect_server import running_prefect_server, running_serve

    spread = ["--spread-hours", str(args.days * 24 - 1), "--retention-days", str(args.days + 30)]
    with tempfile.TemporaryDirectory(prefix="rtk-bench-backfill-") as tmp, \
            simulator("--count", str(args.count), "--size", str(args.size), *spread) as sim, \
            running_prefect_server(Path(tmp) / "server") as server:
        tmpdir = Path(tmp)
        now = datetime.now(timezone.utc)
        start, end = now - timedelta(days=args.days, hours=2), now - timedelta(hours=1)
        env = archiver_env(sim, tmpdir / "prefect")
        warm = [str(BIN / "rtk-archiver"), "archive", "--dry-run", "--since", "2000-01-01", "--until", "2000-01-02"]
        checked(measure(warm, env), "warm-up")
        (tmpdir / "serve").mkdir()
        serve_env = sim.env()  # serve as users run it: Prefect's default logging (INFO, sent to the server)
        results: dict[str, list[dict]] = {"cli": [], "backfill": []}
        with running_serve(server.api_url, cwd=tmpdir / "serve", env=serve_env) as serve:
            api = Api(server.api_url)
            backfill_id, window_id = api.deployment_id(BACKFILL), api.deployment_id(WINDOW)

            def cli(i: int) -> None:
                dest, report = tmpdir / f"cli-{i}", tmpdir / f"cli-{i}.json"
                dest.mkdir()
                cmd = [str(BIN / "rtk-archiver"), "archive", "--since", start.isoformat(), "--until", end.isoformat(),
                       "--destination", f"file://{dest}", "--report", str(report)]
                m = checked(measure(cmd, env), f"CLI round {i}")
                ok = archived(dest, sim.ids, sim.sizes)
                tasks = [o["seconds"] for o in json.loads(report.read_text())["outcomes"] if o.get("seconds")]
                print(f"  CLI      round {i}: {m.seconds:6.1f} s, {ok}/{args.count} archived, archive task median "
                      f"{median(tasks):.2f} s", flush=True)
                results["cli"].append({"seconds": m.seconds, "archived": ok, "max_rss_mib": m.max_rss_mib,
                                       "archive_task_median_seconds": median(tasks)})

            def backfill(i: int) -> None:
                dest = tmpdir / f"backfill-{i}"
                dest.mkdir()
                before = datetime.now(timezone.utc)
                log_mark = len(serve.log_text())
                run = api.run(backfill_id, {"start": start.isoformat(), "end": end.isoformat(), "destination": f"file://{dest}"})
                if run["state"]["type"] != "COMPLETED":
                    raise SystemExit(f"backfill round {i} ended {run['state']['type']}: {run['state'].get('message')}\n"
                                     + serve.log_text()[-3000:])
                children = len(api.child_runs(window_id, before - timedelta(seconds=5)))
                ok = archived(dest, sim.ids, sim.sizes)
                own = run_seconds(run)
                # "Archived ...: N bytes in X s": one archive task, its lock and transfer-slot waits included
                tasks = [float(x) for x in re.findall(r"bytes in ([0-9.]+) s", serve.log_text()[log_mark:])]
                print(f"  backfill round {i}: {run['seconds']:6.1f} s (run itself {own:.1f} s, {children} child run(s)), "
                      f"{ok}/{args.count} archived, archive task median {median(tasks):.2f} s", flush=True)
                results["backfill"].append({"seconds": run["seconds"], "run_seconds": own, "child_runs": children, "archived": ok,
                                            "archive_task_median_seconds": median(tasks)})

            for i in range(args.rounds):
                for step in ((cli, backfill) if i % 2 == 0 else (backfill, cli)):
                    step(i)
            downloads = sim.downloads()
        # every round archived everything into its own directory: each file downloaded once per round
        once = all(n == 2 * args.rounds for n in downloads.values()) and len(downloads) == args.count
    cli_s, bf_s = median([r["seconds"] for r in results["cli"]]), median([r["seconds"] for r in results["backfill"]])
    ratio = bf_s / cli_s
    complete = all(r["archived"] == args.count for rs in results.values() for r in rs)
    print(f"{args.count} recordings of {args.size} bytes over {args.days:g} days: CLI {cli_s:.1f} s, backfill {bf_s:.1f} s "
          f"(median of {args.rounds}): ratio {ratio:.2f} -> {'meets' if ratio <= TARGET_RATIO else 'MISSES'} the "
          f"{TARGET_RATIO}x target; every recording archived in every run: {complete}; each file downloaded once per run: {once}")
    save("backfill", {"count": args.count, "size": args.size, "days": args.days, "rounds": args.rounds,
                      "cli": results["cli"], "backfill": results["backfill"], "cli_seconds": cli_s,
                      "backfill_seconds": bf_s, "ratio": ratio, "target_ratio": TARGET_RATIO,
                      "all_archived": complete, "downloaded_once_per_run": once})
    return 0 if complete and once else 1


if __name__ == "__main__":
    raise SystemExit(main())
