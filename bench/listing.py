"""Listing: the time to page through N recordings (default 10,000) in the simulator, with the
archiver's own listing code (``tasks.listing.list_recordings``: SDK pages, per-item parsing,
de-duplication, window filter), at the default page size and at the API's maximum.

    python -m bench.listing [--count 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timedelta, timezone

from bench.common import median, save, simulator

TARGET_SECONDS = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from tasks.listing import list_recordings

    rows = []
    with simulator("--count", str(args.count), "--size", "1024") as sim:
        os.environ.update(sim.env())
        now = datetime.now(timezone.utc)
        for page_size in (None, 100):
            if page_size:
                os.environ["ARCHIVE_API_PAGE_SIZE"] = str(page_size)
            else:
                os.environ.pop("ARCHIVE_API_PAGE_SIZE", None)
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                listing = list_recordings.fn(now - timedelta(days=1), now)
                times.append(time.perf_counter() - started)
                if len(listing.recordings) != args.count:
                    raise SystemExit(f"listed {len(listing.recordings)} recordings, expected {args.count}")
            label = f"{page_size} per page" if page_size else "default page size (ARCHIVE_API_PAGE_SIZE=50)"
            rows.append({"page_size": page_size or 50, "seconds": times, "median": median(times)})
            print(f"listing {args.count} recordings, {label}: median {median(times):.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})")
    best = rows[0]["median"]
    verdict = "meets" if best < TARGET_SECONDS else "MISSES"
    print(f"target: under {TARGET_SECONDS:.0f} s at the default page size -> {verdict} ({best:.2f} s)")
    save("listing", {"count": args.count, "runs": rows, "target_seconds": TARGET_SECONDS})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
