"""Large recordings: one recording (256 MiB and 1 GiB, served by the simulator on loopback)
archived to SFTP (OpenSSH), S3 (moto server), GCS (the emulator) and Azure (Azurite) by three
contenders, in alternating order, median of N runs:

* ``rtk-archiver archive-one`` (its own figure: the archiving task's time from its report,
  i.e. connect, check, download + verify + upload, sidecar; the command's wall time, Prefect's
  start included, is recorded beside it);
* ``rclone copyurl`` of the same URL to the same server (Debian's rclone);
* the backend's own upload of a local copy, the practical limit: OpenSSH ``sftp put``,
  boto3 ``upload_file``, google-cloud-storage ``upload_from_filename``, azure-storage-blob
  ``upload_blob``.

The archiver's peak memory is recorded for every run: the largest of its VmHWM and the sum of
its RSS and its children's, sampled every 10 ms (a private Prefect API server, if the run
started one, counts: it is part of what archiving costs). The archiver gets its credentials
from the environment, as the other contenders do, with ``ARCHIVE_CREDENTIAL_BLOCKS=false``:
then ``archive-one`` runs in its own process, without a Prefect API and without importing
Prefect (flows/direct.py). ``--credential-blocks`` measures the other path: blocks looked up,
so a private Prefect API server is started for the run (its memory counted in the tree).
Target: <= 120 MiB at every size, 256 MiB and 1 GiB within 5 MiB (issue 14).

    python -m bench.large [--sizes 256M 1G] [--backends sftp s3 gcs azure] [--runs 3]
                          [--tools archiver rclone native] [--credential-blocks]

Azure needs Azurite (``make test`` installs it into .azurite/; or set AZURITE_BLOB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import (
    BIN, MiB, Simulator, archiver_env, checked, gcs_emulator, measure, measure_tree, median, moto_s3, parse_size, save,
    simulator, size_label,
)

BUCKET = "rtk-bench"
SFTP_USER = "rtkecdsa"  # a key user without passphrase: the same login for all three tools
AWS = {"AWS_ACCESS_KEY_ID": "AKIABENCHRTK", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}
TOOLS = ("archiver", "rclone", "native")
TARGET_RATIO = {"sftp": 1.0, "s3": 1.1, "gcs": 1.1, "azure": 1.1}
RSS_LIMIT_MIB, RSS_SPREAD_MIB = 120.0, 5.0  # issue 14: peak <= 120 MiB, independent of the size


@dataclass
class Backend:
    """One server and how each contender reaches it."""

    name: str
    archiver_url: Callable[[str], str]  # prefix -> --destination URL
    archiver_env: dict[str, str]
    rclone_env: dict[str, str]
    rclone_path: Callable[[str, str], str]  # prefix, name -> remote:path
    native: Callable[[Path, str, str], float]  # local file, prefix, name -> seconds
    size_of: Callable[[str, str], int | None]  # prefix, name -> stored size
    clean: Callable[[str], None]  # prefix -> remove everything under it


# -- servers ------------------------------------------------------------------------------------
@contextmanager
def sftp_backend(tmp: Path) -> Iterator[Backend]:
    from tests.fixtures.sshd import running_sshd, sshd_unavailable

    if reason := sshd_unavailable():
        raise SystemExit(f"SFTP benchmark: {reason}")
    with running_sshd() as server:
        user = server.users[SFTP_USER]
        home = server.home(SFTP_USER)
        key = user.key_path
        opts = ["-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "BatchMode=yes", "-i", str(key), "-P", str(server.port)]

        def native(local: Path, prefix: str, name: str) -> float:
            batch = tmp / "sftp-batch"
            batch.write_text(f"-mkdir bench\n-mkdir bench/{prefix}\nput {local} bench/{prefix}/{name}\n")
            m = checked(measure(["sftp", "-q", "-b", str(batch), *opts, f"{SFTP_USER}@127.0.0.1"]), "sftp put")
            return m.seconds

        def size_of(prefix: str, name: str) -> int | None:
            p = home / "bench" / prefix / name
            return p.stat().st_size if p.exists() else None

        yield Backend(
            name="sftp",
            archiver_url=lambda prefix: f"sftp://{SFTP_USER}@127.0.0.1:{server.port}/~/bench/{prefix}",
            archiver_env={"SFTP_PRIVATE_KEY_FILE": str(key), "SFTP_KNOWN_HOSTS": str(server.known_hosts)},
            rclone_env={
                "RCLONE_CONFIG_BENCH_TYPE": "sftp", "RCLONE_CONFIG_BENCH_HOST": "127.0.0.1",
                "RCLONE_CONFIG_BENCH_PORT": str(server.port), "RCLONE_CONFIG_BENCH_USER": SFTP_USER,
                "RCLONE_CONFIG_BENCH_KEY_FILE": str(key), "RCLONE_CONFIG_BENCH_KNOWN_HOSTS_FILE": str(server.known_hosts),
            },
            rclone_path=lambda prefix, name: f"bench:bench/{prefix}/{name}",
            native=native,
            size_of=size_of,
            clean=lambda prefix: shutil.rmtree(home / "bench" / prefix, ignore_errors=True),
        )


@contextmanager
def s3_backend(tmp: Path) -> Iterator[Backend]:
    import boto3

    with moto_s3() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=BUCKET)
        # moto answers uploads to an unversioned bucket with "x-amz-version-id: null", which
        # rclone then HEADs (?versionId=null) and moto refuses (400); with versioning on, the
        # version ids are real (S3 itself sends no version id for an unversioned bucket)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        script = (
            "import sys,time,boto3\n"
            f"c=boto3.client('s3',endpoint_url={endpoint!r},region_name='us-east-1')\n"
            "t=time.perf_counter();c.upload_file(sys.argv[1],sys.argv[2],sys.argv[3]);print(time.perf_counter()-t)\n"
        )

        def native(local: Path, prefix: str, name: str) -> float:
            env = {**os.environ, **AWS}
            m = checked(measure([sys.executable, "-c", script, str(local), BUCKET, f"{prefix}/{name}"], env), "boto3 upload_file")
            return float(m.output.strip().splitlines()[-1])

        def size_of(prefix: str, name: str) -> int | None:
            try:
                return client.head_object(Bucket=BUCKET, Key=f"{prefix}/{name}")["ContentLength"]
            except client.exceptions.ClientError:
                return None

        def clean(prefix: str) -> None:
            for page in client.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
                for obj in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    client.delete_object(Bucket=BUCKET, Key=obj["Key"], VersionId=obj["VersionId"])

        yield Backend(
            name="s3",
            archiver_url=lambda prefix: f"s3://{BUCKET}/{prefix}",
            archiver_env={**AWS, "AWS_ENDPOINT_URL_S3": endpoint},
            rclone_env={
                "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
                "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": AWS["AWS_ACCESS_KEY_ID"],
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": AWS["AWS_SECRET_ACCESS_KEY"],
                "RCLONE_CONFIG_BENCH_ENDPOINT": endpoint, "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            },
            rclone_path=lambda prefix, name: f"bench:{BUCKET}/{prefix}/{name}",
            native=native,
            size_of=size_of,
            clean=clean,
        )


@contextmanager
def gcs_backend(tmp: Path) -> Iterator[Backend]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with gcs_emulator() as url:
        os.environ["STORAGE_EMULATOR_HOST"] = url
        client = storage.Client(project="rtk-bench", credentials=AnonymousCredentials())
        client.create_bucket(BUCKET)
        bucket = client.bucket(BUCKET)
        script = (
            "import sys,time\nfrom google.cloud import storage\nfrom google.auth.credentials import AnonymousCredentials\n"
            "b=storage.Client(project='rtk-bench',credentials=AnonymousCredentials()).bucket(sys.argv[2])\n"
            "t=time.perf_counter();b.blob(sys.argv[3]).upload_from_filename(sys.argv[1]);print(time.perf_counter()-t)\n"
        )

        def native(local: Path, prefix: str, name: str) -> float:
            env = {**os.environ, "STORAGE_EMULATOR_HOST": url}
            m = checked(measure([sys.executable, "-c", script, str(local), BUCKET, f"{prefix}/{name}"], env), "GCS upload_from_filename")
            return float(m.output.strip().splitlines()[-1])

        def size_of(prefix: str, name: str) -> int | None:
            blob = bucket.get_blob(f"{prefix}/{name}")
            return None if blob is None else int(blob.size)

        def clean(prefix: str) -> None:
            for blob in client.list_blobs(BUCKET, prefix=f"{prefix}/"):
                blob.delete()

        yield Backend(
            name="gcs",
            archiver_url=lambda prefix: f"gs://{BUCKET}/{prefix}",
            archiver_env={"STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "rtk-bench"},
            rclone_env={
                "RCLONE_CONFIG_BENCH_TYPE": "google cloud storage", "RCLONE_CONFIG_BENCH_ANONYMOUS": "true",
                "RCLONE_CONFIG_BENCH_ENDPOINT": url,
            },
            rclone_path=lambda prefix, name: f"bench:{BUCKET}/{prefix}/{name}",
            native=native,
            size_of=size_of,
            clean=clean,
        )


@contextmanager
def azure_backend(tmp: Path) -> Iterator[Backend]:
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    from bench.wan import azurite
    from tests.fixtures.object_stores import AZURITE_ACCOUNT, AZURITE_KEY, azurite_connection_string

    with azurite(tmp) as url:
        conn = azurite_connection_string(url)
        service = BlobServiceClient.from_connection_string(conn)
        service.create_container(BUCKET)
        container = service.get_container_client(BUCKET)
        sas = generate_container_sas(
            AZURITE_ACCOUNT, BUCKET, account_key=AZURITE_KEY, expiry=datetime.now(timezone.utc) + timedelta(days=1),
            permission=ContainerSasPermissions(read=True, add=True, create=True, write=True, delete=True, list=True),
        )
        script = (
            "import os,sys,time\nfrom azure.storage.blob import BlobServiceClient\n"
            "c=BlobServiceClient.from_connection_string(os.environ['AZURE_STORAGE_CONNECTION_STRING']).get_container_client(sys.argv[2])\n"
            "t=time.perf_counter()\n"
            "with open(sys.argv[1],'rb') as f: c.upload_blob(sys.argv[3],f)\n"
            "print(time.perf_counter()-t)\n"
        )

        def native(local: Path, prefix: str, name: str) -> float:
            env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn}
            m = checked(measure([sys.executable, "-c", script, str(local), BUCKET, f"{prefix}/{name}"], env), "Azure upload_blob")
            return float(m.output.strip().splitlines()[-1])

        def size_of(prefix: str, name: str) -> int | None:
            try:
                return int(container.get_blob_client(f"{prefix}/{name}").get_blob_properties().size)
            except Exception:  # noqa: BLE001 - not there
                return None

        def clean(prefix: str) -> None:
            for blob in container.list_blobs(name_starts_with=f"{prefix}/"):
                container.delete_blob(blob.name)

        yield Backend(
            name="azure",
            archiver_url=lambda prefix: f"az://{BUCKET}/{prefix}",
            archiver_env={"AZURE_STORAGE_CONNECTION_STRING": conn},
            # a container SAS URL: Debian's rclone builds https://<account>.<endpoint> otherwise
            rclone_env={"RCLONE_CONFIG_BENCH_TYPE": "azureblob", "RCLONE_CONFIG_BENCH_SAS_URL": f"{url}/{AZURITE_ACCOUNT}/{BUCKET}?{sas}"},
            rclone_path=lambda prefix, name: f"bench:{BUCKET}/{prefix}/{name}",
            native=native,
            size_of=size_of,
            clean=clean,
        )


BACKENDS = {"sftp": sftp_backend, "s3": s3_backend, "gcs": gcs_backend, "azure": azure_backend}


# -- contenders ---------------------------------------------------------------------------------
def run_archiver(sim: Simulator, backend: Backend, rid: str, prefix: str, tmp: Path, blocks: bool = False) -> dict:
    report = tmp / "report.json"
    env = archiver_env(sim, tmp / "prefect", **backend.archiver_env, ARCHIVE_CREDENTIAL_BLOCKS=str(blocks).lower())
    cmd = [str(BIN / "rtk-archiver"), "archive-one", rid, "--destination", backend.archiver_url(prefix), "--report", str(report)]
    m, tree, children = measure_tree(cmd, env)
    checked(m, f"rtk-archiver to {backend.name}")
    (outcome,) = json.loads(report.read_text())["outcomes"]
    if outcome["kind"] != "archived":
        raise RuntimeError(f"rtk-archiver did not archive: {outcome}")
    return {"seconds": outcome["seconds"], "command_seconds": m.seconds, "process_rss_mib": m.max_rss_mib,
            "max_rss_mib": tree, "child_processes": children}


def run_rclone(url: str, backend: Backend, prefix: str, name: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(backend.rclone_env, RCLONE_CONFIG="/dev/null")
    m = checked(measure(["rclone", "copyurl", url, backend.rclone_path(prefix, name)], env), f"rclone copyurl to {backend.name}")
    return {"seconds": m.seconds, "max_rss_mib": m.max_rss_mib}


def download(url: str, path: Path) -> None:
    with httpx.stream("GET", url, timeout=60) as r, open(path, "wb") as out:
        r.raise_for_status()
        for chunk in r.iter_bytes(1 << 20):
            out.write(chunk)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[256 * MiB, 1024 * MiB])
    parser.add_argument("--backends", nargs="+", choices=sorted(BACKENDS), default=["sftp", "s3", "gcs", "azure"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS),
                        help="contenders to run (e.g. only archiver, for its memory)")
    parser.add_argument("--credential-blocks", action="store_true",
                        help="ARCHIVE_CREDENTIAL_BLOCKS=true: the run starts a private Prefect API server (counted)")
    parser.add_argument("--output", default="large", help="results file name under bench/results/")
    args = parser.parse_args()
    tools = tuple(t for t in TOOLS if t in args.tools)
    if "rclone" in tools and not shutil.which("rclone"):
        raise SystemExit("rclone is not installed (make bench installs Debian's rclone)")

    results: list[dict] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rtk-bench-large-")))
        sim = stack.enter_context(simulator("--sizes", *map(str, args.sizes)))
        backends = [stack.enter_context(BACKENDS[name](tmp)) for name in args.backends]
        # Prefect creates its database on the first run of a new PREFECT_HOME: not measured
        warm = [str(BIN / "rtk-archiver"), "archive", "--dry-run", "--since", "2000-01-01", "--until", "2000-01-02"]
        checked(measure(warm, archiver_env(sim, tmp / "prefect")), "warm-up")
        for rid, size in zip(sim.ids, sim.sizes):
            url = sim.download_url(rid)
            local = tmp / f"local-{size}.mp4"
            download(url, local)
            name = f"bench-{size}.mp4"
            for backend in backends:
                row = {"size": size, "backend": backend.name, **{t: [] for t in tools}}
                for run in range(args.runs):
                    k = run % len(tools)
                    order = tools[k:] + tools[:k]  # alternate who goes first
                    for tool in order:
                        prefix = f"r{run}-{tool}"
                        if tool == "archiver":
                            got = run_archiver(sim, backend, rid, prefix, tmp, args.credential_blocks)
                            stored = backend.size_of(prefix, sim_name(sim, rid))
                        elif tool == "rclone":
                            got = run_rclone(url, backend, prefix, name)
                            stored = backend.size_of(prefix, name)
                        else:
                            got = {"seconds": backend.native(local, prefix, name)}
                            stored = backend.size_of(prefix, name)
                        if stored != size:
                            raise RuntimeError(f"{tool} stored {stored} bytes on {backend.name}, expected {size}")
                        backend.clean(prefix)
                        row[tool].append(got)
                        print(f"  {size_label(size):>8} {backend.name:<5} run {run + 1} {tool:<8} {got['seconds']:7.2f} s"
                              + (f"  (command {got['command_seconds']:.1f} s, peak {got['max_rss_mib']:.0f} MiB, "
                                 f"own VmHWM {got['process_rss_mib']:.0f} MiB, children: {', '.join(got['child_processes']) or 'none'})"
                                 if tool == "archiver" else ""),
                              flush=True)
                results.append(summarize(row))
            local.unlink()
    print_table(results)
    save(args.output, {"runs": args.runs, "tools": list(tools), "credential_blocks": args.credential_blocks, "rows": results,
                       "targets": {"ratio": TARGET_RATIO, "rss_mib": RSS_LIMIT_MIB, "rss_spread_mib": RSS_SPREAD_MIB}})
    return 0


def sim_name(sim: Simulator, rid: str) -> str:
    from rtk_archiver.api import RealtimeKitAPI
    from rtk_archiver.naming import keys_for

    with RealtimeKitAPI(sim.settings()) as api:
        return keys_for(api.get_recording(rid)).video


def summarize(row: dict) -> dict:
    out = {"size": row["size"], "backend": row["backend"]}
    for tool in TOOLS:
        if tool not in row:
            continue
        secs = [r["seconds"] for r in row[tool]]
        out[tool] = {"seconds": secs, "median": median(secs), "mb_per_s": row["size"] / median(secs) / 1e6}
    if "archiver" in row:
        arch = row["archiver"]
        out["archiver"]["command_seconds"] = [r["command_seconds"] for r in arch]
        # the process and any child it started (a private Prefect API server) together
        out["archiver"]["max_rss_mib"] = max(r["max_rss_mib"] for r in arch)
        out["archiver"]["process_rss_mib"] = max(r["process_rss_mib"] for r in arch)
        out["archiver"]["child_processes"] = sorted({c for r in arch for c in r["child_processes"]})
    if "rclone" in row:
        out["rclone"]["max_rss_mib"] = max(r["max_rss_mib"] for r in row["rclone"])
    if "archiver" in out and "rclone" in out:
        out["ratio_vs_rclone"] = out["archiver"]["median"] / out["rclone"]["median"]
    if "archiver" in out and "native" in out:
        out["ratio_vs_native"] = out["archiver"]["median"] / out["native"]["median"]
    return out


def print_table(rows: list[dict]) -> None:
    def secs(r: dict, tool: str) -> str:
        return f"{r[tool]['median']:8.2f}s" if tool in r else f"{'-':>9}"

    print()
    print(f"{'size':>8} {'backend':<7} {'archiver':>9} {'rclone':>9} {'native':>9} {'vs rclone':>9} {'target':>7} "
          f"{'RSS MiB':>8} {'RSS ok':>6}")
    for r in rows:
        target = TARGET_RATIO[r["backend"]]
        ratio = r.get("ratio_vs_rclone")
        speed = f"{ratio:8.2f}x {'<=' + str(target):>7}" if ratio is not None else f"{'-':>9} {'':>7}"
        speed_ok = "" if ratio is None else ("ok" if ratio <= target else "MISS")
        rss = r["archiver"]["max_rss_mib"] if "archiver" in r else None
        rss_text = f"{rss:7.0f}  {'ok' if rss <= RSS_LIMIT_MIB else 'MISS':>6}" if rss is not None else f"{'-':>8} {'':>6}"
        print(f"{size_label(r['size']):>8} {r['backend']:<7} {secs(r, 'archiver')} {secs(r, 'rclone')} {secs(r, 'native')} "
              f"{speed} {rss_text}  {speed_ok}")
    rows = [r for r in rows if "archiver" in r]
    if rows:
        rss = [r["archiver"]["max_rss_mib"] for r in rows]
        spreads = {}
        for backend in {r["backend"] for r in rows}:
            mine = [r["archiver"]["max_rss_mib"] for r in rows if r["backend"] == backend]
            spreads[backend] = max(mine) - min(mine)
        children = sorted({c for r in rows for c in r["archiver"]["child_processes"]})
        print(f"archiver peak memory (its VmHWM, or with children the sum of their PSS; children seen: "
              f"{', '.join(children) or 'none'}): max {max(rss):.0f} MiB "
              f"(target <= {RSS_LIMIT_MIB:.0f}); spread between sizes, per backend: "
              + ", ".join(f"{b} {s:.0f}" for b, s in sorted(spreads.items())) + f" MiB (target <= {RSS_SPREAD_MIB:.0f})")


if __name__ == "__main__":
    raise SystemExit(main())
