"""Many small recordings: 1,000 recordings of 64 KiB archived by ``rtk-archiver archive`` into
a local directory (``file://``), then the same command again when everything is archived
(it must transfer 0 bytes). Wall time of the whole command (Prefect's embedded API included)
and the archiving process's peak RSS.

    python -m bench.small [--count 1000] [--size 64K]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import BIN, archiver_env, checked, measure, parse_size, save, simulator

TARGET_FIRST, TARGET_RERUN = 90.0, 30.0


def run(env: dict[str, str], archive: Path, report: Path, label: str) -> dict:
    cmd = [str(BIN / "rtk-archiver"), "archive", "--destination", f"file://{archive}", "--report", str(report)]
    m = checked(measure(cmd, env), label)
    outcomes = json.loads(report.read_text())["outcomes"]
    kinds: dict[str, int] = {}
    for o in outcomes:
        kinds[o["kind"]] = kinds.get(o["kind"], 0) + 1
    moved = sum(o["bytes_transferred"] for o in outcomes)
    print(f"{label}: {m.seconds:.1f} s, peak RSS {m.max_rss_mib:.0f} MiB, {kinds}, {moved} bytes transferred")
    return {"seconds": m.seconds, "max_rss_mib": m.max_rss_mib, "outcomes": kinds, "bytes_transferred": moved}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=parse_size, default=64 * 1024)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rtk-bench-small-") as tmp, simulator("--count", str(args.count), "--size", str(args.size)) as sim:
        tmpdir = Path(tmp)
        archive = tmpdir / "archive"
        archive.mkdir()
        env = archiver_env(sim, tmpdir / "prefect")
        # Prefect creates its database on the first run of a new PREFECT_HOME: not measured
        warm = [str(BIN / "rtk-archiver"), "archive", "--dry-run", "--since", "2000-01-01", "--until", "2000-01-02"]
        checked(measure(warm, env), "warm-up")
        first = run(env, archive, tmpdir / "first.json", f"first run, {args.count} recordings")
        rerun = run(env, archive, tmpdir / "rerun.json", "rerun, all archived")
        stored = sum(1 for p in archive.rglob("*.mp4"))
    ok_first = first["outcomes"].get("archived") == args.count and stored == args.count
    ok_rerun = rerun["outcomes"].get("already archived") == args.count and rerun["bytes_transferred"] == 0
    if not (ok_first and ok_rerun):
        raise SystemExit(f"unexpected outcomes: first {first['outcomes']}, rerun {rerun['outcomes']}, {stored} files")
    print(
        f"targets: first run under {TARGET_FIRST:.0f} s -> {'meets' if first['seconds'] < TARGET_FIRST else 'MISSES'}; "
        f"rerun under {TARGET_RERUN:.0f} s with 0 bytes -> {'meets' if rerun['seconds'] < TARGET_RERUN else 'MISSES'}"
    )
    save("small", {"count": args.count, "size": args.size, "first": first, "rerun": rerun,
                   "targets": {"first_seconds": TARGET_FIRST, "rerun_seconds": TARGET_RERUN}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
