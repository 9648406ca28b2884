"""What every benchmark script shares: the servers it starts on 127.0.0.1, running and
measuring a command (wall time and the peak RSS of that process), and the results files."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rtk_archiver.prefect_api import stop_process
from tests.fixtures import free_port, wait_port  # the same helpers the tests' servers use

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("RTK_BENCH_RESULTS", REPO / "bench" / "results"))  # tests point it elsewhere
BIN = Path(sys.executable).parent  # the project's virtual environment
MiB = 1024 * 1024


@contextmanager
def process(cmd: Sequence[str], port: int | None = None, **kw) -> Iterator[subprocess.Popen]:
    """A server process, stopped on exit."""
    proc = subprocess.Popen(list(cmd), **kw)
    try:
        if port is not None:
            wait_port(port, proc)
        yield proc
    finally:
        stop_process(proc, timeout=10)


@dataclass
class Simulator:
    base_url: str
    token: str
    account_id: str
    app_id: str
    ids: list[str]
    sizes: list[int]
    proc: subprocess.Popen | None = None  # the simulator's process (its stdin takes commands)

    def env(self) -> dict[str, str]:
        return {
            "CLOUDFLARE_BASE_URL": self.base_url, "CLOUDFLARE_API_TOKEN": self.token,
            "CLOUDFLARE_ACCOUNT_ID": self.account_id, "REALTIMEKIT_APP_ID": self.app_id,
        }

    def downloads(self) -> dict[str, int]:
        """Downloads from byte 0, per ``<recording id>/<video|audio>``, as the simulator counted them."""
        assert self.proc and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("downloads\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def settings(self):
        from rtk_archiver.settings import Settings

        return Settings(
            cloudflare_api_token=self.token, cloudflare_account_id=self.account_id,
            realtimekit_app_id=self.app_id, cloudflare_base_url=self.base_url,
        )

    def download_url(self, recording_id: str) -> str:
        from rtk_archiver.api import RealtimeKitAPI

        with RealtimeKitAPI(self.settings()) as api:
            url = api.get_recording(recording_id).download_url
        assert url, recording_id
        return url


@contextmanager
def simulator(*args: str) -> Iterator[Simulator]:
    """``python -m bench.sim ARGS`` in its own process (which also counts downloads)."""
    cmd = [sys.executable, "-m", "bench.sim", *args]
    with process(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulator did not start")
        yield Simulator(**json.loads(line), proc=proc)


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server in its own process; yields the endpoint URL."""
    port = free_port()
    with process([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def gcs_emulator() -> Iterator[str]:
    """gcp-storage-emulator (in memory) in its own process (``bench.gcs_emulator``); yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.gcs_emulator", "--port", str(port)]
    with process(cmd, port, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        yield f"http://127.0.0.1:{port}"


@dataclass
class Measured:
    seconds: float
    max_rss_mib: float  # peak RSS of the process itself (VmHWM)
    tree_max_rss_mib: float  # the largest of it and the children it waited for (getrusage)
    returncode: int
    output: str


def _peak_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def measure(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 1800) -> Measured:
    """Run cmd: wall time, and the peak RSS of that process alone (its VmHWM, sampled every
    10 ms until it exits; the rtk-archiver CLI runs Prefect's API server as a child process,
    which getrusage would count in)."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        peak = 0
        while True:
            hwm = _peak_rss_kib(proc.pid)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, hwm or 0)
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{cmd[0]} ran longer than {timeout} s")
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read().decode(errors="replace")
    tree = usage.ru_maxrss / 1024
    return Measured(seconds, (peak / 1024) or tree, tree, proc.returncode, output)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                kids = [int(k) for k in fh.read().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def _pss_kib(pid: int) -> int:
    """The process's proportional set size: shared pages divided among the processes sharing
    them (a child forked from the CLI is not its memory counted twice)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def measure_tree(cmd: list[str], env: dict[str, str], timeout: float = 1800, cwd: Path | None = None) -> tuple[Measured, float, list[str]]:
    """Run cmd: (``Measured`` with the process's own peak RSS (VmHWM), the peak MiB of the
    process and its descendants together (the largest sum of their PSS, sampled every 10 ms;
    at least the VmHWM), the names of the descendants seen)."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        hwm = tree = 0
        seen: dict[int, str] = {}
        while True:
            kids = _descendants(proc.pid)
            for k in kids:
                if k not in seen:
                    seen[k] = _comm(k)
            now = _pss_kib(proc.pid) + sum(_pss_kib(k) for k in kids) if kids else 0
            own = _peak_rss_kib(proc.pid) or 0
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            hwm, tree = max(hwm, own), max(tree, now)
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{cmd[0]} ran longer than {timeout} s")
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        out.seek(0)
        output = out.read().decode(errors="replace")
    peak = max(tree, hwm) / 1024
    return Measured(seconds, hwm / 1024, peak, os.waitstatus_to_exitcode(status), output), peak, sorted(set(seen.values()))


def checked(m: Measured, what: str) -> Measured:
    if m.returncode != 0:
        raise RuntimeError(f"{what} failed ({m.returncode}):\n{m.output[-3000:]}")
    return m


def archiver_env(sim: Simulator, prefect_home: Path, **extra: str) -> dict[str, str]:
    """The environment of an ``rtk-archiver`` run: the simulator's API, Prefect's embedded
    API in its own home (so runs do not share a database with anything else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ARCHIVE_", "SFTP_", "AWS_"))}
    env.update(sim.env())
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, str]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0].strip()
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"

    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "memory": mem,
        "os": platform.platform(), "python": platform.python_version(),
        "rclone": version(["rclone", "version"]),
        "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip() if shutil.which("ssh") else "not found",
    }


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(), **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    print(f"results written to {path}")
    return path


def size_label(n: int) -> str:
    return f"{n // (1024 * MiB)} GiB" if n % (1024 * MiB) == 0 else f"{n / MiB:g} MiB"


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": 1024 * MiB}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)
