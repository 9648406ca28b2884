"""Uploads into a crowded directory: a flat archive holds every recording in one directory
(~3 names per recording: video, audio, sidecar). The time of one 64 KiB upload beside N files,
local (``file://``) and SFTP (OpenSSH on loopback), for the first upload of the process into
that directory (which looks through it for abandoned temp files) and for the ones after it.

    python -m bench.crowded [--files 0 3000 30000] [--uploads 20]

SFTP needs root (sshd with its own users, as ``bench.large``); without it only ``file://`` runs.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import median, save

SIZE = 64 * 1024


@contextmanager
def backends(tmp: Path) -> Iterator[dict[str, Callable[[], tuple[object, Path]]]]:
    """Makers of a backend on a fresh, empty directory, and that directory's path."""
    from rtk_archiver.settings import Settings
    from storage_backends import open_backend, parse_destination_url

    settings = dict(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b")

    def local() -> tuple[object, Path]:
        root = tmp / f"local-{uuid.uuid4().hex[:8]}"
        root.mkdir()
        return open_backend(parse_destination_url(f"file://{root}"), Settings(**settings)), root

    from tests.fixtures.sshd import running_sshd, sshd_unavailable

    if reason := sshd_unavailable():
        print(f"SFTP left out: {reason}")
        yield {"file": local}
        return
    with running_sshd() as server:
        user = server.users["rtkpass"]

        def sftp() -> tuple[object, Path]:
            name = f"crowded-{uuid.uuid4().hex[:8]}"
            url = f"sftp://rtkpass@127.0.0.1:{server.port}/~/{name}"
            backend = open_backend(parse_destination_url(url), Settings(
                **settings, sftp_password=user.password, sftp_known_hosts=server.known_hosts))
            backend.put_bytes("keep.json", b"{}")  # creates the directory (its first upload)
            return backend, server.home("rtkpass") / name

        yield {"file": local, "sftp": sftp}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[0, 3000, 30000])
    parser.add_argument("--uploads", type=int, default=20)
    args = parser.parse_args()

    try:
        from storage_backends.tempnames import SWEEPS
    except ImportError:  # a checkout from before the sweeps (its uploads listed the directory each time)
        SWEEPS = None

    data = os.urandom(SIZE)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rtk-bench-crowded-") as tmp, backends(Path(tmp)) as makers:
        for kind, make in makers.items():
            for count in args.files:
                backend, root = make()
                try:
                    for i in range(count):
                        (root / f"recording-{i:06d}.mp4").touch()
                    if SWEEPS is not None:
                        SWEEPS.forget()  # as a new process: its first upload here looks through the directory
                    started = time.perf_counter()
                    backend.put("first.mp4", io.BytesIO(data), SIZE)
                    first = time.perf_counter() - started
                    times = []
                    for i in range(args.uploads):
                        started = time.perf_counter()
                        backend.put(f"next-{i}.mp4", io.BytesIO(data), SIZE)
                        times.append(time.perf_counter() - started)
                finally:
                    backend.close()
                rows.append({"backend": kind, "files": count, "first_seconds": first, "upload_seconds": times,
                             "median_seconds": median(times)})
                print(f"{kind:5} beside {count:6,} files: first upload {first * 1000:7.1f} ms, "
                      f"then {median(times) * 1000:6.1f} ms per 64 KiB upload (median of {args.uploads})")
    save("crowded", {"size": SIZE, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
