"""Profile one transfer (simulator download -> backend upload) in this process, without Prefect:
the archiver's own ``stream_file`` under pyinstrument (the upload thread; the read-ahead thread
downloads and hashes beside it). Prints the time, the throughput and the profile.

    python -m bench.profile_transfer --backend sftp --size 256M [--read-ahead 8] [--html out.html]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import parse_size, simulator
from bench.large import BACKENDS


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="sftp")
    parser.add_argument("--size", type=parse_size, default=parse_size("256M"))
    parser.add_argument("--read-ahead", type=int, default=None, help="chunks (default: the setting's default)")
    parser.add_argument("--html", type=Path, help="also write the profile as HTML here")
    parser.add_argument("--no-profile", action="store_true", help="time only")
    args = parser.parse_args()

    from rtk_archiver.settings import Settings
    from storage_backends import open_backend, parse_destination_url
    from tasks.transfer import Download, stream_file

    logger = logging.getLogger("bench")
    with tempfile.TemporaryDirectory(prefix="rtk-bench-profile-") as tmp, simulator("--sizes", str(args.size)) as sim, \
            BACKENDS[args.backend](Path(tmp)) as backend:
        os.environ.update(backend.archiver_env)
        settings = Settings(_env_file=None, cloudflare_api_token=sim.token, cloudflare_account_id=sim.account_id,
                            realtimekit_app_id=sim.app_id, cloudflare_base_url=sim.base_url)
        read_ahead = settings.archive_read_ahead_chunks if args.read_ahead is None else args.read_ahead
        url = sim.download_url(sim.ids[0])
        profiler = None
        if not args.no_profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
        with open_backend(parse_destination_url(backend.archiver_url("profile")), settings) as store, httpx.Client() as http:
            store.stat("warm-up")  # connect and authenticate outside the measured part
            started = time.perf_counter()
            cpu0, busy0 = resource.getrusage(resource.RUSAGE_SELF), _busy_seconds()
            if profiler:
                profiler.start()
            download = Download(http, url, kind="video", expected_size=args.size, url_expiry=None, refresh=None,
                                chunk_size=settings.archive_chunk_size, max_resumes=0, logger=logger)
            entry = stream_file(download, backend=store, key="rec.mp4", logger=logger, read_ahead=read_ahead)
            if profiler:
                profiler.stop()
            seconds = time.perf_counter() - started
            cpu1, busy1 = resource.getrusage(resource.RUSAGE_SELF), _busy_seconds()
        mine = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        print(f"{args.backend}: {entry.size} bytes in {seconds:.2f} s = {entry.size / seconds / 1e6:.0f} MB/s (read-ahead {read_ahead}); "
              f"CPU: this process {mine:.2f} s, whole machine {busy1 - busy0:.2f} s of {seconds * (os.cpu_count() or 1):.2f} s")
        if profiler:
            print(profiler.output_text(unicode=True, color=False, show_all=bool(os.environ.get("SHOW_ALL"))))
            if args.html:
                args.html.write_text(profiler.output_html())
        backend.clean("profile")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
