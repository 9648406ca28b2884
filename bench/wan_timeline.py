"""Where the time goes over an emulated WAN: the archiver's transfer alone (``Download`` +
``stream_file``, no Prefect, no claim or sidecar), inside bench.wan's namespace, shaping and
latency proxy, beside ``rclone copyurl`` of the same file over the same link, alternating.

For each archiver run it prints a timeline of the upload, from the archiver's own calls:

* ``download end``: when the last byte of the source had been read; ``download MB/s``;
* ``tail``: from then to the end of ``put`` (the parts or chunks still to send, then the
  commit: S3's CompleteMultipartUpload, Azure's block list, GCS's last chunk, and the check of
  what was stored);
* S3 and Azure: how long the reading of the next part waited for a part in flight to finish
  (``slot wait``: the download stands still once the read-ahead is full), and the parts that
  finished out of order;
* GCS: each chunk's request time (sent and answered), the first and last ones;
* ``download held``: how long the download waited for room in the read-ahead (the upload was
  behind);
* the process's CPU time.

    python -m bench.wan_timeline [--link 20ms-100M] [--backends s3 azure gcs] [--size 256M] [--runs 2]

Root only (a network namespace and tc), like bench.wan. Results: bench/results/wan-timeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.common import BIN, REPO, MiB, parse_size, save, simulator

#: the backends whose upload this script can follow (SFTP streams: no parts to time)
TRACED = ("s3", "azure", "gcs")


def inner(url: str, size: int, destination: str, key: str) -> None:
    """In the namespace: one transfer with its timeline, printed as one JSON line."""
    import logging

    import httpx

    from rtk_archiver.settings import load_settings
    from storage_backends import open_backend, parse_destination_url
    from storage_backends import parts as parts_module
    from tasks.transfer import Download, download_client, stream_file

    t0 = time.monotonic()
    events: list[tuple[float, str, int]] = []

    def log(what: str, n: int = 0) -> None:
        events.append((round(time.monotonic() - t0, 3), what, n))

    submit, wait_below = parts_module.PartUploads.submit, parts_module.PartUploads.wait_below
    counter = {"n": 0}

    def traced_submit(self, fn, *args):
        counter["n"] += 1
        number = counter["n"]

        def part(*a):
            try:
                return fn(*a)
            finally:
                log("part done", number)

        log("part sent", number)
        return submit(self, part, *args)

    def traced_wait(self, limit=None):
        log("wait")
        wait_below(self, limit)
        log("waited")

    parts_module.PartUploads.submit, parts_module.PartUploads.wait_below = traced_submit, traced_wait

    chunks_of = Download.chunks

    def traced_chunks(self):
        yield from chunks_of(self)
        log("download end")

    Download.chunks = traced_chunks

    from rtk_archiver import streams

    offer, held = streams.ReadAhead._offer, [0.0]

    def traced_offer(self, item):  # blocks while the read-ahead is full: the download held back
        started = time.monotonic()
        try:
            return offer(self, item)
        finally:
            held[0] += time.monotonic() - started

    streams.ReadAhead._offer = traced_offer
    settings = load_settings()
    with open_backend(parse_destination_url(destination), settings) as backend, \
            download_client(httpx.Timeout(120, connect=15)) as http:
        session = getattr(getattr(backend, "client", None), "_http", None)  # GCS: a requests session
        if session is not None and hasattr(session, "hooks"):
            session.hooks.setdefault("response", []).append(
                lambda r, *a, **k: log("chunk answered", int(r.elapsed.total_seconds() * 1000)) if r.request.method == "PUT" else None
            )
        backend.stat("warm-up")  # connect outside the timeline, as an archive run has by then
        t0 = time.monotonic()
        download = Download(http, url, kind="video", expected_size=size, url_expiry=None, refresh=None,
                            chunk_size=settings.archive_chunk_size, max_resumes=3, logger=logging.getLogger("bench"),
                            stall_seconds=120)
        log("opened")
        stream_file(download, backend=backend, key=key, logger=logging.getLogger("bench"),
                    read_ahead=settings.archive_read_ahead_chunks)
        log("end")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"events": events, "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 2),
                      "download_held_seconds": round(held[0], 2)}), flush=True)


def summarize(events: list, size: int) -> dict:
    at = {what: t for t, what, _ in events if what in ("opened", "download end", "end")}
    out = {
        "seconds": at["end"],
        "download_end": at["download end"],
        "download_mb_per_s": round(size / max(at["download end"] - at["opened"], 1e-6) / 1e6, 2),
        "tail_seconds": round(at["end"] - at["download end"], 2),
    }
    waits, waited_from = [], None
    done_order = []
    for t, what, n in events:
        if what == "wait":
            waited_from = t
        elif what == "waited" and waited_from is not None:
            waits.append(t - waited_from)
        elif what == "part done":
            done_order.append(n)
    if done_order:
        out["parts"] = len(done_order)
        out["slot_wait_seconds"] = round(sum(waits), 2)
        out["slot_waits_over_0.2s"] = sum(1 for w in waits if w > 0.2)
        out["parts_done_out_of_order"] = sum(1 for i, n in enumerate(done_order) if any(m < n for m in done_order[i + 1:]))
        last_sent = max(t for t, what, _ in events if what == "part sent")
        out["last_part_sent"] = last_sent
    chunks = [n for _, what, n in events if what == "chunk answered"]
    if chunks:
        out["chunks"] = len(chunks)
        out["chunk_request_ms_first_last"] = [chunks[0], chunks[-1]]
    return out


def main() -> int:
    import bench.wan as wan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--link", choices=sorted(wan.LINKS), default="20ms-100M")
    parser.add_argument("--backends", nargs="+", choices=TRACED, default=list(TRACED))
    parser.add_argument("--size", type=parse_size, default=256 * MiB)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--archiver-env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--output", default="wan-timeline")
    args = parser.parse_args()
    link = wan.LINKS[args.link]
    extra = dict(item.split("=", 1) for item in args.archiver_env)
    rows = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rtk-bench-timeline-")))
        ns = stack.enter_context(wan.Namespace())
        sim = stack.enter_context(simulator("--sizes", str(args.size)))
        sim_port = int(sim.base_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        ns.shape(link)
        src_port = stack.enter_context(wan.wan_proxy(ns, sim_port, link))
        url = wan._in_ns_url(sim.download_url(sim.ids[0]), ns.host_addr, src_port)
        for name in args.backends:
            with wan.BACKENDS[name](tmp, ns, link) as backend:
                env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHIVE_", "AWS_", "PREFECT_"))}
                env.update(backend.archiver_env, **extra, PYTHONPATH=str(REPO), ARCHIVE_CREDENTIAL_BLOCKS="false",
                           CLOUDFLARE_API_TOKEN="bench", CLOUDFLARE_ACCOUNT_ID="bench", REALTIMEKIT_APP_ID="bench")
                row = {"backend": name, "archiver": [], "rclone": []}
                for run in range(args.runs):
                    for tool in (("archiver", "rclone") if run % 2 == 0 else ("rclone", "archiver")):
                        prefix = f"t{run}-{tool}"
                        if tool == "rclone":
                            got = wan.run_rclone(ns, url, backend, prefix, "x.mp4")
                        else:
                            cmd = [str(BIN / "python"), "-m", "bench.wan_timeline", "--inner", url, str(args.size),
                                   backend.archiver_url(prefix), "x.mp4"]
                            done = subprocess.run(ns.cmd(cmd), env=env, check=True, capture_output=True, text=True, cwd=REPO)
                            result = json.loads(done.stdout.strip().splitlines()[-1])
                            got = {**summarize(result["events"], args.size), "cpu_seconds": result["cpu_seconds"],
                                   "download_held_seconds": result["download_held_seconds"]}
                        backend.clean(prefix)
                        row[tool].append(got)
                        print(f"{args.link} {name} run {run + 1} {tool}: {json.dumps(got)}", flush=True)
                a = statistics.median(r["seconds"] for r in row["archiver"])
                r = statistics.median(r["seconds"] for r in row["rclone"])
                row["ratio"] = round(a / r, 3)
                print(f"{args.link} {name}: transfer alone {a:.2f} s, rclone copyurl {r:.2f} s: {a / r:.2f}x", flush=True)
                rows.append(row)
    save(args.output, {"benchmark": "wan_timeline", "link": args.link, "size": args.size, "runs": args.runs,
                       "archiver_env": extra, "rows": rows})
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        inner(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        sys.exit(main())
