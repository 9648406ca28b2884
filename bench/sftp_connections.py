"""SFTP uploads over 1 or more connections (``ARCHIVE_SFTP_CONNECTIONS``) against ``rclone
copyurl``, side by side: one recording served by the simulator on loopback, archived by
``rtk-archiver archive-one`` with each connection count and by rclone, in alternating order,
median of N runs (the same contenders and measures as ``bench.large``).

    python -m bench.sftp_connections [--sizes 256M 1G] [--connections 1 3] [--runs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.common import MiB, checked, measure, median, parse_size, save, simulator, size_label, archiver_env, BIN
from bench.large import run_archiver, run_rclone, sftp_backend, sim_name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[256 * MiB, 1024 * MiB])
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", default="sftp-connections", help="results file name under bench/results/")
    args = parser.parse_args()
    if not shutil.which("rclone"):
        raise SystemExit("rclone is not installed (make bench installs Debian's rclone)")
    tools = [f"archiver-{n}" for n in args.connections] + ["rclone"]
    rows = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rtk-bench-sftpc-")))
        sim = stack.enter_context(simulator("--sizes", *map(str, args.sizes)))
        backend = stack.enter_context(sftp_backend(tmp))
        warm = [str(BIN / "rtk-archiver"), "archive", "--dry-run", "--since", "2000-01-01", "--until", "2000-01-02"]
        checked(measure(warm, archiver_env(sim, tmp / "prefect")), "warm-up")
        for rid, size in zip(sim.ids, sim.sizes):
            url = sim.download_url(rid)
            row: dict = {"size": size, **{t: [] for t in tools}}
            for run in range(args.runs):
                shift = run % len(tools)
                for tool in tools[shift:] + tools[:shift]:
                    prefix = f"r{run}-{tool}"
                    if tool == "rclone":
                        got = run_rclone(url, backend, prefix, "bench.mp4")
                        stored = backend.size_of(prefix, "bench.mp4")
                    else:
                        n = tool.split("-")[1]
                        b = dataclasses.replace(backend, archiver_env={**backend.archiver_env, "ARCHIVE_SFTP_CONNECTIONS": n})
                        got = run_archiver(sim, b, rid, prefix, tmp)
                        stored = backend.size_of(prefix, sim_name(sim, rid))
                    if stored != size:
                        raise RuntimeError(f"{tool} stored {stored} bytes, expected {size}")
                    backend.clean(prefix)
                    row[tool].append(got)
                    rss = f"  peak RSS {got['max_rss_mib']:.0f} MiB" if "max_rss_mib" in got else ""
                    print(f"  {size_label(size):>8} run {run + 1} {tool:<11} {got['seconds']:7.2f} s{rss}", flush=True)
            out = {"size": size}
            for tool in tools:
                secs = [r["seconds"] for r in row[tool]]
                out[tool] = {"seconds": secs, "median": median(secs), "max_rss_mib": max(r["max_rss_mib"] for r in row[tool])}
            for tool in tools[:-1]:
                out[tool]["ratio_vs_rclone"] = out[tool]["median"] / out["rclone"]["median"]
            rows.append(out)
    print()
    print(f"{'size':>8} " + " ".join(f"{t:>12}" for t in tools) + "   ratios vs rclone")
    for r in rows:
        print(f"{size_label(r['size']):>8} " + " ".join(f"{r[t]['median']:11.2f}s" for t in tools) + "   "
              + ", ".join(f"{t}: {r[t]['ratio_vs_rclone']:.2f}x" for t in tools[:-1]))
    save(args.output, {"runs": args.runs, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
