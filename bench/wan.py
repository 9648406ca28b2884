"""Large recordings over an emulated WAN: the same contenders as ``bench.large`` (rtk-archiver,
``rclone copyurl``, the backend's own upload of a local copy), with latency and a bandwidth cap
between them and both the source (the simulator's media server and API) and the destination
(OpenSSH sftp, moto S3, gcp-storage-emulator, Azurite).

How the WAN is made (this kernel has no ``netem``):

* the contenders run inside a network namespace of their own (``ip netns exec``), joined to
  the host by a veth pair with private addresses; ``tc tbf`` on both ends of the pair caps
  each direction at the link's rate;
* every server listens on 127.0.0.1 of the host as usual; the contenders reach each one
  through ``bench/wanproxy.py`` (listening on the host's end of the veth), which delays every
  chunk by half the round trip (+- a little jitter, order kept) in each direction.

Before the contenders, each link is measured without and with the proxy (one TCP stream up,
one down): what the link carries and that the proxy is not the bottleneck.

    python -m bench.wan [--links 20ms-100M 80ms-1G] [--sizes 256M 1G] [--backends sftp s3 gcs azure] [--runs 3]

Needs root (namespace, tc, sshd). Results: ``bench/results/wan.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    BIN, REPO, MiB, Simulator, archiver_env, checked, gcs_emulator, measure, median, moto_s3, parse_size, process, save,
    simulator, size_label,
)
from bench.large import AWS, BUCKET, SFTP_USER, Backend, download, sim_name
from tests.fixtures import free_port, wait_port

TOOLS = ("archiver", "rclone", "native")
TARGET_RATIO = 1.0
VERBOSE = False  # --verbose: the archiver's own output after each run


@dataclass(frozen=True)
class Link:
    name: str
    rtt_ms: float
    mbit: float

    @property
    def jitter_ms(self) -> float:  # "a little": 5% of the one-way delay
        return self.rtt_ms / 2 * 0.05

    @property
    def bytes_per_s(self) -> float:
        return self.mbit * 1e6 / 8


LINKS = {
    "20ms-100M": Link("20ms-100M", 20, 100),
    "80ms-1G": Link("80ms-1G", 80, 1000),
    "20ms-1G": Link("20ms-1G", 20, 1000),
    "80ms-100M": Link("80ms-100M", 80, 100),
}


# -- the namespace and the link -------------------------------------------------------------------
class Namespace:
    """``rtkwan-<pid>``: a veth pair, host end ``10.213.<n>.1``, namespace end ``.2``."""

    def __init__(self) -> None:
        n = os.getpid() % 250 + 1
        self.name = f"rtkwan{os.getpid()}"
        self.host_if, self.ns_if = f"rwh{os.getpid()}"[:15], f"rwn{os.getpid()}"[:15]
        self.host_addr, self.ns_addr = f"10.213.{n}.1", f"10.213.{n}.2"

    def _ip(self, *args: str, ns: bool = False) -> None:
        cmd = (["ip", "netns", "exec", self.name] if ns else []) + list(args)
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def __enter__(self) -> "Namespace":
        if os.geteuid() != 0:
            raise SystemExit("bench.wan needs root (a network namespace and tc)")
        _remove_stale()
        self._ip("ip", "netns", "add", self.name)
        try:
            self._ip("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            self._ip("ip", "link", "set", self.ns_if, "netns", self.name)
            self._ip("ip", "addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            self._ip("ip", "link", "set", self.host_if, "up")
            self._ip("ip", "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if, ns=True)
            self._ip("ip", "link", "set", self.ns_if, "up", ns=True)
            self._ip("ip", "link", "set", "lo", "up", ns=True)  # Prefect's API server, in there
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        _remove(self.name)

    def shape(self, link: Link) -> None:
        """tbf at the link's rate on both ends: each direction capped (a full-duplex link)."""
        rate = link.mbit * 1e6 / 8
        burst = max(int(rate / 250), 128 * 1024)  # >= 4 ms at the rate, >= a GSO packet
        for ns, dev in ((False, self.host_if), (True, self.ns_if)):
            self._ip("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{link.mbit:g}mbit",
                     "burst", str(burst), "latency", "50ms", ns=ns)

    def cmd(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def _remove(name: str) -> None:
    pid = name.removeprefix("rtkwan")
    subprocess.run(["ip", "link", "del", f"rwh{pid}"[:15]], capture_output=True)  # its peer goes with it
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _remove_stale() -> None:
    """Namespaces an earlier, killed bench.wan left behind (its pid is gone)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = name.removeprefix("rtkwan")
        if name.startswith("rtkwan") and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _remove(name)


@contextmanager
def wan_proxy(ns: Namespace, target_port: int, link: Link) -> Iterator[int]:
    """bench.wanproxy on the host's end of the veth, to 127.0.0.1:target_port; yields its port."""
    cmd = [sys.executable, "-m", "bench.wanproxy", "--listen", ns.host_addr, "--target", f"127.0.0.1:{target_port}",
           "--delay-ms", f"{link.rtt_ms / 2:g}", "--jitter-ms", f"{link.jitter_ms:g}"]
    with process(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the WAN proxy did not start")
        yield json.loads(line)["port"]


_WAIT_HEALTHY = r"""
import sys, time, urllib.request
deadline = time.monotonic() + 900
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=5).read(); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.2)
"""


@contextmanager
def prefect_api_in(ns: Namespace, home: Path) -> Iterator[str]:
    """One Prefect API server (the one the CLI would start for itself, ``prefect_api._SERVE``)
    inside the namespace for every archiver run: each run's figure is its task's own time
    either way; a shared server spares each command starting its own (~1 min per run on the
    busy machine)."""
    import importlib.util

    from rtk_archiver.prefect_api import _SERVE

    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None
    app_dir = str(Path(spec.origin).parent.parent)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = ns.cmd([sys.executable, "-c", _SERVE, "--app-dir", app_dir, "--port", str(port)])
    with process(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        url = f"http://127.0.0.1:{port}/api"
        try:
            checked(measure(ns.cmd([sys.executable, "-c", _WAIT_HEALTHY, f"{url}/health"])), "the Prefect API in the namespace")
            yield url
        finally:
            assert proc.stdin is not None
            proc.stdin.close()  # it stops when its stdin closes
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass


# -- the link alone, with and without the proxy --------------------------------------------------
_BLAST_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0)); s.listen(8); print(s.getsockname()[1], flush=True)
size = int(sys.argv[2]); buf = bytearray(1 << 20)
while True:
    c, _ = s.accept()
    mode = c.recv(1)
    if mode == b"u":   # the client sends size bytes: count them, answer "ok"
        got = 0
        while got < size:
            n = c.recv_into(buf)
            if not n: break
            got += n
        c.sendall(b"ok")
    else:              # send size bytes
        view = memoryview(buf); left = size
        while left:
            left -= c.send(view[:min(left, len(buf))])
        c.shutdown(socket.SHUT_WR); c.recv(1)
    c.close()
"""

_BLAST_CLIENT = r"""
import socket, sys, time
host, port, mode, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
c = socket.create_connection((host, port)); buf = bytearray(1 << 20)
t = time.perf_counter(); c.sendall(mode.encode())
if mode == "u":
    view = memoryview(buf); left = size
    while left:
        left -= c.send(view[:min(left, len(buf))])
    assert c.recv(2) == b"ok"
else:
    got = 0
    while True:
        n = c.recv_into(buf)
        if not n: break
        got += n
    assert got == size, got
print(time.perf_counter() - t)
"""


def link_check(ns: Namespace, link: Link, size: int) -> dict:
    """One TCP stream each way, straight over the shaped veth and through the proxy: MB/s."""
    out: dict = {}
    for where in ("direct", "proxy"):
        bind = ns.host_addr if where == "direct" else "127.0.0.1"
        with process([sys.executable, "-c", _BLAST_SERVER, bind, str(size)], stdout=subprocess.PIPE, text=True) as srv, ExitStack() as stack:
            assert srv.stdout is not None
            port = int(srv.stdout.readline())
            if where == "proxy":
                port = stack.enter_context(wan_proxy(ns, port, link))
            for mode, label in (("u", "up"), ("d", "down")):
                m = checked(measure(ns.cmd([sys.executable, "-c", _BLAST_CLIENT, ns.host_addr, str(port), mode, str(size)])), "link check")
                secs = float(m.output.strip().splitlines()[-1])
                out[f"{where}_{label}_mb_per_s"] = size / secs / 1e6
    out["capacity_mb_per_s"] = link.bytes_per_s / 1e6
    return out


# -- servers, reached through the proxy ----------------------------------------------------------
def _native_seconds(ns: Namespace, argv: list[str], env: dict[str, str] | None, what: str) -> float:
    m = checked(measure(ns.cmd(argv), env), what)
    return float(m.output.strip().splitlines()[-1])


@contextmanager
def sftp_backend(tmp: Path, ns: Namespace, link: Link) -> Iterator[Backend]:
    from tests.fixtures.sshd import running_sshd, sshd_unavailable

    if reason := sshd_unavailable():
        raise SystemExit(f"SFTP benchmark: {reason}")
    with running_sshd() as server, wan_proxy(ns, server.port, link) as port:
        user = server.users[SFTP_USER]
        home = server.home(SFTP_USER)
        key = user.key_path
        known = tmp / "wan_known_hosts"
        known.write_text(f"[{ns.host_addr}]:{port} {server.host_key_line}\n")
        opts = ["-o", f"UserKnownHostsFile={known}", "-o", "BatchMode=yes", "-i", str(key), "-P", str(port)]

        def native(local: Path, prefix: str, name: str) -> float:
            batch = tmp / "sftp-batch"
            batch.write_text(f"-mkdir bench\n-mkdir bench/{prefix}\nput {local} bench/{prefix}/{name}\n")
            m = checked(measure(ns.cmd(["sftp", "-q", "-b", str(batch), *opts, f"{SFTP_USER}@{ns.host_addr}"])), "sftp put")
            return m.seconds

        def size_of(prefix: str, name: str) -> int | None:
            p = home / "bench" / prefix / name
            return p.stat().st_size if p.exists() else None

        yield Backend(
            name="sftp",
            archiver_url=lambda prefix: f"sftp://{SFTP_USER}@{ns.host_addr}:{port}/~/bench/{prefix}",
            archiver_env={"SFTP_PRIVATE_KEY_FILE": str(key), "SFTP_KNOWN_HOSTS": str(known)},
            rclone_env={
                "RCLONE_CONFIG_BENCH_TYPE": "sftp", "RCLONE_CONFIG_BENCH_HOST": ns.host_addr,
                "RCLONE_CONFIG_BENCH_PORT": str(port), "RCLONE_CONFIG_BENCH_USER": SFTP_USER,
                "RCLONE_CONFIG_BENCH_KEY_FILE": str(key), "RCLONE_CONFIG_BENCH_KNOWN_HOSTS_FILE": str(known),
            },
            rclone_path=lambda prefix, name: f"bench:bench/{prefix}/{name}",
            native=native,
            size_of=size_of,
            clean=lambda prefix: shutil.rmtree(home / "bench" / prefix, ignore_errors=True),
        )


@contextmanager
def s3_backend(tmp: Path, ns: Namespace, link: Link) -> Iterator[Backend]:
    import boto3

    with moto_s3() as direct:
        client = boto3.client("s3", endpoint_url=direct, region_name="us-east-1",
                              aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})  # see bench.large
        with wan_proxy(ns, int(direct.rsplit(":", 1)[1]), link) as port:
            endpoint = f"http://{ns.host_addr}:{port}"
            script = (
                "import sys,time,boto3\n"
                f"c=boto3.client('s3',endpoint_url={endpoint!r},region_name='us-east-1')\n"
                "t=time.perf_counter();c.upload_file(sys.argv[1],sys.argv[2],sys.argv[3]);print(time.perf_counter()-t)\n"
            )

            def native(local: Path, prefix: str, name: str) -> float:
                env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | AWS
                return _native_seconds(ns, [sys.executable, "-c", script, str(local), BUCKET, f"{prefix}/{name}"], env, "boto3 upload_file")

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
def gcs_backend(tmp: Path, ns: Namespace, link: Link) -> Iterator[Backend]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    with gcs_emulator() as direct, wan_proxy(ns, int(direct.rsplit(":", 1)[1]), link) as port:
        url = f"http://{ns.host_addr}:{port}"
        saved = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = direct  # this process (checks, cleanup): straight
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
            return _native_seconds(ns, [sys.executable, "-c", script, str(local), BUCKET, f"{prefix}/{name}"], env, "GCS upload_from_filename")

        def size_of(prefix: str, name: str) -> int | None:
            blob = bucket.get_blob(f"{prefix}/{name}")
            return None if blob is None else int(blob.size)

        def clean(prefix: str) -> None:
            for blob in client.list_blobs(BUCKET, prefix=f"{prefix}/"):
                blob.delete()

        try:
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
        finally:
            if saved is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = saved


@contextmanager
def azurite(tmp: Path) -> Iterator[str]:
    """Azurite's blob service (npm, ``make test`` installs it into .azurite/); yields its URL."""
    from tests.fixtures.object_stores import azurite_binary

    binary = azurite_binary()
    if binary is None:
        raise SystemExit("azurite-blob is not installed (make test installs it into .azurite/; or set AZURITE_BLOB)")
    port = free_port()
    cmd = [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port),
           "--skipApiVersionCheck", "--silent", "--loose", "--inMemoryPersistence"]
    log = open(tmp / "azurite.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_port(port, proc, timeout=60)
        except RuntimeError:
            log.seek(0)
            raise RuntimeError(f"Azurite did not start: {log.read()[-2000:]}") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGTERM)  # node and nothing else: its own session
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextmanager
def azure_backend(tmp: Path, ns: Namespace, link: Link) -> Iterator[Backend]:
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    from tests.fixtures.object_stores import AZURITE_ACCOUNT, AZURITE_KEY, azurite_connection_string

    with azurite(tmp) as direct, wan_proxy(ns, int(direct.rsplit(":", 1)[1]), link) as port:
        url = f"http://{ns.host_addr}:{port}"
        service = BlobServiceClient.from_connection_string(azurite_connection_string(direct))
        service.create_container(BUCKET)
        container = service.get_container_client(BUCKET)
        conn = azurite_connection_string(url)
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
            return _native_seconds(ns, [sys.executable, "-c", script, str(local), BUCKET, f"{prefix}/{name}"], env, "Azure upload_blob")

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
            # Debian's rclone 1.60 builds https://<account>.<endpoint> from account + endpoint (a DNS
            # lookup that hangs without internet); a container SAS URL is used as given
            rclone_env={"RCLONE_CONFIG_BENCH_TYPE": "azureblob", "RCLONE_CONFIG_BENCH_SAS_URL": f"{url}/{AZURITE_ACCOUNT}/{BUCKET}?{sas}"},
            rclone_path=lambda prefix, name: f"bench:{BUCKET}/{prefix}/{name}",
            native=native,
            size_of=size_of,
            clean=clean,
        )


BACKENDS = {"sftp": sftp_backend, "s3": s3_backend, "gcs": gcs_backend, "azure": azure_backend}


# -- contenders ---------------------------------------------------------------------------------
def run_archiver(ns: Namespace, sim: Simulator, backend: Backend, rid: str, prefix: str, tmp: Path, extra_env: dict[str, str]) -> dict:
    report = tmp / "report.json"
    env = archiver_env(sim, tmp / "prefect", **backend.archiver_env, **extra_env)
    cmd = [str(BIN / "rtk-archiver"), "archive-one", rid, "--destination", backend.archiver_url(prefix), "--report", str(report)]
    m = checked(measure(ns.cmd(cmd), env), f"rtk-archiver to {backend.name}")
    if VERBOSE:
        print(m.output[-4000:])
    (outcome,) = json.loads(report.read_text())["outcomes"]
    if outcome["kind"] != "archived":
        raise RuntimeError(f"rtk-archiver did not archive: {outcome}")
    return {"seconds": outcome["seconds"], "command_seconds": m.seconds, "max_rss_mib": m.max_rss_mib}


def run_rclone(ns: Namespace, url: str, backend: Backend, prefix: str, name: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(backend.rclone_env, RCLONE_CONFIG="/dev/null")
    m = checked(measure(ns.cmd(["rclone", "copyurl", url, backend.rclone_path(prefix, name)]), env), f"rclone copyurl to {backend.name}")
    return {"seconds": m.seconds, "max_rss_mib": m.max_rss_mib}


def _proxied(sim: Simulator, host: str, port: int) -> Simulator:
    """The simulator as the contenders see it: through the proxy (its URLs follow the Host)."""
    rest = sim.base_url.split("://", 1)[1].split("/", 1)[1]
    return Simulator(f"http://{host}:{port}/{rest}", sim.token, sim.account_id, sim.app_id, sim.ids, sim.sizes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", nargs="+", choices=sorted(LINKS), default=["20ms-100M", "80ms-1G"])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[256 * MiB])
    parser.add_argument("--backends", nargs="+", choices=sorted(BACKENDS), default=["sftp", "s3", "gcs", "azure"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--link-check-size", type=parse_size, default=None, help="bytes per direction of the link check (default: 2 s at the link's rate)")
    parser.add_argument("--archiver-env", nargs="*", default=[], metavar="NAME=VALUE", help="extra settings for the archiver (tuning)")
    parser.add_argument("--output", default="wan", help="results file name under bench/results/")
    parser.add_argument("--private-api", action="store_true",
                        help="let each archiver command start its own Prefect API (as a plain CLI run does) instead of one shared server")
    parser.add_argument("--verbose", action="store_true", help="print the archiver's output (set PREFECT_LOGGING_LEVEL=INFO with --archiver-env)")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    if not shutil.which("rclone"):
        raise SystemExit("rclone is not installed (make bench installs Debian's rclone)")
    base_env = dict(item.split("=", 1) for item in args.archiver_env)
    tools = tuple(args.tools)

    results: list[dict] = []
    checks: dict[str, dict] = {}
    failures: list[dict] = []
    started = time.monotonic()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rtk-bench-wan-")))
        ns = stack.enter_context(Namespace())
        sim = stack.enter_context(simulator("--sizes", *map(str, args.sizes)))
        sim_port = int(sim.base_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        locals_: dict[int, Path] = {}
        for rid, size in zip(sim.ids, sim.sizes):  # local copies for the native uploads, straight
            locals_[size] = tmp / f"local-{size}.mp4"
            download(sim.download_url(rid), locals_[size])
        for link_name in args.links:
            link = LINKS[link_name]
            extra_env = dict(base_env)
            ns.shape(link)
            checks[link.name] = link_check(ns, link, args.link_check_size or int(2 * link.bytes_per_s))
            c = checks[link.name]
            print(f"link {link.name}: capacity {c['capacity_mb_per_s']:.1f} MB/s; one TCP stream up/down: "
                  f"direct {c['direct_up_mb_per_s']:.1f}/{c['direct_down_mb_per_s']:.1f}, "
                  f"through the proxy {c['proxy_up_mb_per_s']:.1f}/{c['proxy_down_mb_per_s']:.1f} MB/s", flush=True)
            with ExitStack() as per_link:
                src_port = per_link.enter_context(wan_proxy(ns, sim_port, link))
                seen = _proxied(sim, ns.host_addr, src_port)
                if "archiver" in tools and not args.private_api:
                    api_url = per_link.enter_context(prefect_api_in(ns, tmp / f"prefect-{link.name}"))
                    extra_env = {**extra_env, "PREFECT_API_URL": api_url}
                if "archiver" in tools:  # Prefect creates its database on the first run of a new PREFECT_HOME
                    warm = [str(BIN / "rtk-archiver"), "archive", "--dry-run", "--since", "2000-01-01", "--until", "2000-01-02"]
                    checked(measure(ns.cmd(warm), archiver_env(seen, tmp / "prefect", **extra_env)), "warm-up")
                for backend_name in args.backends:
                    with BACKENDS[backend_name](tmp, ns, link) as backend:
                        for rid, size in zip(sim.ids, sim.sizes):
                            url = _in_ns_url(sim.download_url(rid), ns.host_addr, src_port)
                            name = f"bench-{size}.mp4"
                            row = {"link": link.name, "size": size, "backend": backend.name, **{t: [] for t in tools}}
                            for run in range(args.runs):
                                k = run % len(tools)
                                for tool in tools[k:] + tools[:k]:  # alternate who goes first
                                    for attempt in (1, 2):  # a run killed from outside (shared machine) is run again, once
                                        prefix = f"r{run}-{tool}-{uuid.uuid4().hex[:6]}"
                                        try:
                                            if tool == "archiver":
                                                got = run_archiver(ns, seen, backend, rid, prefix, tmp, extra_env)
                                                stored = backend.size_of(prefix, sim_name(sim, rid))
                                            elif tool == "rclone":
                                                got = run_rclone(ns, url, backend, prefix, name)
                                                stored = backend.size_of(prefix, name)
                                            else:
                                                got = {"seconds": backend.native(locals_[size], prefix, name)}
                                                stored = backend.size_of(prefix, name)
                                            if stored != size:
                                                raise RuntimeError(f"{tool} stored {stored} bytes on {backend.name}, expected {size}")
                                            break
                                        except RuntimeError as exc:
                                            failures.append({"link": link.name, "backend": backend.name, "tool": tool, "error": str(exc)[-500:]})
                                            print(f"  {tool} failed (attempt {attempt}): {str(exc)[-300:]}", flush=True)
                                            if attempt == 2:
                                                raise
                                        finally:
                                            backend.clean(prefix)
                                    row[tool].append(got)
                                    extra = (f"  (command {got['command_seconds']:.1f} s, peak RSS {got['max_rss_mib']:.0f} MiB)"
                                             if tool == "archiver" else "")
                                    print(f"  {link.name} {size_label(size):>8} {backend.name:<5} run {run + 1} {tool:<8} "
                                          f"{got['seconds']:7.2f} s {size / got['seconds'] / 1e6:6.1f} MB/s{extra}", flush=True)
                            results.append(summarize(row, link, tools))
                            save(args.output, _data(args, results, checks, started, failures))
    print_table(results)
    save(args.output, _data(args, results, checks, started, failures))
    return 0


def _data(args: argparse.Namespace, rows: list[dict], checks: dict, started: float, failures: list[dict]) -> dict:
    return {
        "failed_attempts": failures,
        "runs": args.runs, "rows": rows, "link_checks": checks, "target_ratio": TARGET_RATIO,
        "invocation": "python -m bench.wan " + " ".join(sys.argv[1:]),
        "links": {name: {"rtt_ms": LINKS[name].rtt_ms, "mbit": LINKS[name].mbit, "jitter_ms": LINKS[name].jitter_ms} for name in args.links},
        "load_average": os.getloadavg(), "elapsed_seconds": time.monotonic() - started,
    }


def _in_ns_url(url: str, host: str, port: int) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{host}:{port}/{rest.split('/', 1)[1]}"


def summarize(row: dict, link: Link, tools: tuple[str, ...]) -> dict:
    out = {"link": row["link"], "size": row["size"], "backend": row["backend"], "capacity_mb_per_s": link.bytes_per_s / 1e6}
    for tool in tools:
        secs = [r["seconds"] for r in row[tool]]
        mbs = row["size"] / median(secs) / 1e6
        out[tool] = {"seconds": secs, "median": median(secs), "mb_per_s": mbs, "of_capacity": mbs / (link.bytes_per_s / 1e6)}
    if "archiver" in tools:
        out["archiver"]["command_seconds"] = [r["command_seconds"] for r in row["archiver"]]
        out["archiver"]["max_rss_mib"] = max(r["max_rss_mib"] for r in row["archiver"])
    if "rclone" in tools:
        out["rclone"]["max_rss_mib"] = max(r["max_rss_mib"] for r in row["rclone"])
    if "archiver" in tools and "rclone" in tools:
        out["ratio_vs_rclone"] = out["archiver"]["median"] / out["rclone"]["median"]
    return out


def print_table(rows: list[dict]) -> None:
    print()
    print(f"{'link':<10} {'size':>8} {'backend':<7} {'archiver':>16} {'rclone':>16} {'native':>16} {'vs rclone':>9} {'RSS MiB':>8}")

    def cell(r: dict, tool: str) -> str:
        if tool not in r:
            return f"{'-':>16}"
        return f"{r[tool]['median']:7.2f}s {100 * r[tool]['of_capacity']:4.0f}%cap"

    for r in rows:
        ratio = r.get("ratio_vs_rclone")
        ok = "" if ratio is None else ("ok" if ratio <= TARGET_RATIO else "MISS")
        rss = r.get("archiver", {}).get("max_rss_mib")
        print(f"{r['link']:<10} {size_label(r['size']):>8} {r['backend']:<7} {cell(r, 'archiver')} {cell(r, 'rclone')} {cell(r, 'native')} "
              f"{(f'{ratio:8.2f}x' if ratio else '-'):>9} {(f'{rss:7.0f}' if rss else '-'):>8}  {ok}")


if __name__ == "__main__":
    raise SystemExit(main())
