"""A RealtimeKit simulator in its own process, loaded for one benchmark.

    python -m bench.sim --sizes 268435456 1073741824   # one UPLOADED recording per size
    python -m bench.sim --count 1000 --size 65536      # many recordings of one size

Prints one JSON line (URL, credentials, recording ids), then serves until stdin closes, so
the benchmark's process owns it and the archiver's process measures only the archiver.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import datetime, timedelta, timezone

from rtk_archiver.simulator import SimulatorServer
from rtk_archiver.simulator.state import SimulatorState


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[], help="one recording per size (bytes)")
    parser.add_argument("--count", type=int, default=0, help="this many recordings of --size bytes")
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--max-per-page", type=int, default=100)
    parser.add_argument("--spread-hours", type=float, default=0.0,
                        help="stopped times spread evenly over this many hours before 2 h ago (default: 1 s apart)")
    parser.add_argument("--s3-bucket", default=None,
                        help="give every recording this S3 storage_config (path --s3-path)")
    parser.add_argument("--s3-path", default="recordings")
    parser.add_argument("--deliver-to", default=None,
                        help="an S3 endpoint: RealtimeKit's own upload of each recording goes there (simulator/delivery.py)")
    parser.add_argument("--upload", default="complete", help="what those uploads do: complete, missing, truncated, different")
    parser.add_argument("--retention-days", type=float, default=None,
                        help="keep files on the simulated bucket this long (default: the simulator's 7 days)")
    args = parser.parse_args()
    if args.retention_days:
        from rtk_archiver.simulator import state as state_module

        state_module.RETENTION = timedelta(days=args.retention_days)

    state = SimulatorState(url_ttl_seconds=6 * 3600, max_per_page=args.max_per_page)
    if args.deliver_to:
        from rtk_archiver.simulator.delivery import Deliverer

        state.deliverer = Deliverer(s3_endpoint=args.deliver_to)
    storage = {"type": "aws", "bucket": args.s3_bucket, "region": "us-east-1", "path": args.s3_path,
               "access_key": "bench", "secret": "bench"} if args.s3_bucket else None
    now = datetime.now(timezone.utc)
    ids: list[str] = []
    sizes = list(args.sizes) + [args.size] * args.count
    for n, size in enumerate(sizes):
        rid = str(uuid.uuid5(uuid.NAMESPACE_OID, f"bench-{n}-{size}"))
        step = args.spread_hours * 3600 / len(sizes) if args.spread_hours else 1.0
        stopped = now - timedelta(hours=2) - timedelta(seconds=n * step)  # default: inside the last day, distinct
        state.add_recording(
            id=rid, status="UPLOADED", file_size=size, audio=False, stopped_time=stopped,
            meeting_title=f"Bench {n}", output_file_name=f"bench-{n:05d}-{size}.mp4",
            storage_config=storage, upload=args.upload,
        )
        ids.append(rid)
    with SimulatorServer(state) as sim:
        info = {
            "base_url": sim.base_url, "token": sim.token, "account_id": sim.account_id,
            "app_id": sim.app_id, "ids": ids, "sizes": sizes,
        }
        print(json.dumps(info), flush=True)
        for line in sys.stdin:  # until the benchmark closes our stdin (or exits)
            if line.strip() == "downloads":  # how many downloads from byte 0 each file had
                counts = {f"{rid}/{kind}": n for (rid, kind), n in state.downloads.items()}
                print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
