"""Webhook latency: how soon after RealtimeKit's ``recording.statusUpdate`` (UPLOADED) webhook
is a recording archived, on ``rtk-archiver serve`` + ``rtk-archiver webhook`` against a real
``prefect server``, compared with waiting for the scheduled poll.

    python -m bench.webhook [--runs 10] [--size 1M] [--runner-poll-seconds 10]

For each run: a recording of ``--size`` bytes goes UPLOADED in the simulator, which sends its
signed webhook; the clock stops when the sidecar (written last) appears in the archive. Also
reported, per run, from the Prefect API: when the trigger's flow run was created, when the serve
process started it, and when it finished. Target: the median under 15 s.
``--runner-poll-seconds`` is ``PREFECT_RUNNER_POLL_FREQUENCY`` (Prefect's default, 10 s), how
often ``serve`` looks for runs to start: the largest share of the latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

from bench.common import REPO, parse_size, save, size_label
from rtk_archiver.simulator import SimulatorServer
from tests.fixtures import free_port
from tests.fixtures import wait_until
from tests.fixtures.prefect_server import running_prefect_server, running_serve

TARGET_SECONDS = 15.0


def wait(check, timeout: float, what, interval: float = 0.05):
    return wait_until(check, timeout, what, interval)


def automation_ready(api_url: str) -> bool:
    try:
        r = httpx.post(f"{api_url}/automations/filter", json={}, timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and any(a["name"] == "archive-on-upload" for a in r.json())


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def manual_run(api_url: str, recording_id: str) -> dict | None:
    """The archive-manual flow run the trigger created for this recording (times as datetimes)."""
    r = httpx.post(f"{api_url}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_DESC", "limit": 50}, timeout=10)
    r.raise_for_status()
    for run in r.json():
        if recording_id in ((run.get("parameters") or {}).get("request") or {}).get("recording_ids", []):
            return run
    return None


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size", type=parse_size, default=1024 * 1024)
    parser.add_argument("--runner-poll-seconds", type=int, default=10, help="PREFECT_RUNNER_POLL_FREQUENCY of serve")
    parser.add_argument("--poll-interval-minutes", type=float, default=15.0, help="ARCHIVE_POLL_INTERVAL_MINUTES (the comparison)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rtk-bench-webhook-") as tmp, SimulatorServer() as sim:
        tmpdir = Path(tmp)
        archive = tmpdir / "archive"
        archive.mkdir()
        rx_port = free_port()
        sim.webhooks.url = f"http://127.0.0.1:{rx_port}/webhook"
        env = {
            "CLOUDFLARE_BASE_URL": sim.base_url, "CLOUDFLARE_API_TOKEN": sim.token,
            "CLOUDFLARE_ACCOUNT_ID": sim.account_id, "REALTIMEKIT_APP_ID": sim.app_id,
            "ARCHIVE_DEFAULT_DESTINATION": f"file://{archive}",
            "ARCHIVE_POLL_INTERVAL_MINUTES": str(args.poll_interval_minutes),
            "ARCHIVE_API_REQUESTS_PER_SECOND": "50",
            "RTK_WEBHOOK_PUBLIC_KEY": sim.webhook_public_key_pem,
            "PREFECT_RUNNER_POLL_FREQUENCY": str(args.runner_poll_seconds),
            "PREFECT_HOME": str(tmpdir / "prefect-client"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        setup_started = time.monotonic()
        with running_prefect_server(tmpdir) as server, \
                running_serve(server.api_url, cwd=REPO, env=env, log_path=tmpdir / "serve.log") as serve, \
                running_serve(server.api_url, "--port", str(rx_port), cwd=tmpdir, env=env, command="webhook") as rx:
            wait(lambda: healthy(rx_port), 120, lambda: rx.log_text()[-2000:])
            wait(lambda: automation_ready(server.api_url), 180, lambda: serve.log_text()[-3000:], interval=0.5)
            print(f"prefect server, serve and the receiver up in {time.monotonic() - setup_started:.0f} s")
            time.sleep(3)  # let serve's start-up work (a first scheduled poll, if any) settle
            runs = []
            load_before = os.getloadavg()[0]
            for n in range(args.runs):
                rec = sim.state.add_recording(status="UPLOADING", file_size=args.size, audio=False,
                                              stopped_time=datetime.now(timezone.utc) - timedelta(seconds=5),
                                              output_file_name=f"bench-webhook-{n:02d}.mp4")
                sidecar = archive / f"bench-webhook-{n:02d}.mp4.metadata.json"
                started_wall = datetime.now(timezone.utc)
                started = time.monotonic()
                sim.state.set_status(rec["id"], "UPLOADED")
                # archived = the complete sidecar (a claim is written before the files)
                wait(lambda: sidecar.exists() and b'"state": "complete"' in sidecar.read_bytes(), 120,
                     lambda: serve.log_text()[-3000:], interval=0.02)
                total = time.monotonic() - started
                sim.webhooks.flush(5)
                ack = next(d for d in reversed(sim.webhooks.deliveries) if d.event["recording"]["id"] == rec["id"])
                run = wait(lambda: (r := manual_run(server.api_url, rec["id"])) and r.get("end_time") and r,
                           60, "the manual run to end", interval=0.5)  # one run at a time
                created, start, end = (_ts(run.get("created")), _ts(run.get("start_time")), _ts(run.get("end_time")))

                def after(t: datetime | None) -> float | None:
                    return round((t - started_wall).total_seconds(), 2) if t else None

                row = {
                    "seconds": round(total, 2), "webhook_answer_seconds": round(ack.seconds or 0, 3),
                    "webhook_status": ack.status_code, "run_created_after": after(created),
                    "run_started_after": after(start), "run_finished_after": after(end),
                }
                runs.append(row)
                print(f"run {n + 1}/{args.runs}: archived {total:.1f} s after the webhook "
                      f"(answered in {row['webhook_answer_seconds'] * 1000:.0f} ms; run created +{row['run_created_after']} s, "
                      f"started +{row['run_started_after']} s, finished +{row['run_finished_after']} s)")
            downloads = {rid: n for (rid, kind), n in sim.state.downloads.items() if kind == "video"}
            load_after = os.getloadavg()[0]
    times = [r["seconds"] for r in runs]
    med = statistics.median(times)

    def med_of(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    poll_avg = args.poll_interval_minutes * 60 / 2
    summary = {
        "median": round(med, 2), "min": round(min(times), 2), "max": round(max(times), 2),
        "median_webhook_answer_ms": round(statistics.median(r["webhook_answer_seconds"] for r in runs) * 1000, 1),
        "median_run_created_after": med_of("run_created_after"),
        "median_run_started_after": med_of("run_started_after"),
        "median_run_finished_after": med_of("run_finished_after"),
    }
    print(f"\n{args.runs} recordings of {size_label(args.size)}: archived {summary['median']:.1f} s after the webhook "
          f"(median; min {summary['min']:.1f}, max {summary['max']:.1f}); the webhook answered in "
          f"{summary['median_webhook_answer_ms']:.0f} ms (median)")
    print(f"poll only (every {args.poll_interval_minutes:g} min): {poll_avg:.0f} s on average, up to "
          f"{args.poll_interval_minutes * 60:.0f} s, plus the run -> the webhook is ~{poll_avg / med:.0f}x sooner on average")
    # most of the delay is the flow run's own process starting (imports: ~3 s of CPU), so a
    # busy machine shows here: the load is recorded with the figures
    load = {"cpus": os.cpu_count(), "load_average_1min_before": round(load_before, 2),
            "load_average_1min_after": round(load_after, 2)}
    print(f"machine: {load['cpus']} CPUs, 1-min load average {load_before:.1f} before, {load_after:.1f} after")
    ok = med < TARGET_SECONDS
    print(f"target: median under {TARGET_SECONDS:.0f} s -> {'meets' if ok else 'MISSES'}")
    if any(n != 1 for n in downloads.values()):
        raise SystemExit(f"a recording was downloaded more than once: {downloads}")
    save("webhook", {
        "runs": args.runs, "size": args.size, "runner_poll_seconds": args.runner_poll_seconds,
        "poll_interval_minutes": args.poll_interval_minutes, "poll_only_average_seconds": poll_avg,
        "summary": summary, "per_run": runs, "target_seconds": TARGET_SECONDS, "meets_target": ok, "load": load,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
