"""Prefect's API for a plain CLI run (no ``PREFECT_API_URL``), in a child process.

Prefect's own ephemeral mode starts exactly this server (uvicorn on
``prefect.server.api.server:create_app``, UI and background services off) but imports the
whole server (FastAPI app, database models, ~80 MiB) into the calling process just to launch
it. Launching it here keeps the archiving process small (see BENCHMARKS.md: peak RSS).

The server is this run's alone, like the ephemeral one: ``tasks.limits`` does not take shared
concurrency slots on it (``private_api_active``).

It never outlives the CLI: the child asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``, so even a SIGKILLed CLI takes it along) and stops when its stdin
closes. It runs in a session of its own and ignores SIGINT / SIGTERM, so a terminal's Ctrl-C
or a service manager's SIGTERM to the whole group reaches only the CLI, which still needs
its API to finish the run (and would otherwise print connection errors against a dead
server for minutes).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from rtk_archiver import interrupt
from rtk_archiver.children import child_setup

PRIVATE_API_ENV = "RTK_ARCHIVER_PRIVATE_PREFECT_API"
STARTUP_TIMEOUT_SECONDS = 120.0  # the first start on a new PREFECT_HOME migrates its database


class PrefectAPIError(RuntimeError):
    """The private Prefect API server did not start."""


def private_api_active() -> bool:
    return os.environ.get(PRIVATE_API_ENV) == "1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def private_prefect_api(while_starting: Callable[[], object] | None = None) -> Iterator[str | None]:
    """Start a private Prefect API unless ``PREFECT_API_URL`` names one; yields its URL (None
    when a server is configured). Must run before ``prefect`` is imported.

    ``while_starting`` (e.g. importing Prefect and the flows, ~2 s of CPU) runs while the
    server starts (its URL is already set: the port is chosen first), not before or after."""
    if os.environ.get("PREFECT_API_URL"):
        if while_starting is not None:
            while_starting()
        yield None
        return
    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None
    app_dir = str(Path(spec.origin).parent.parent)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    cmd = [sys.executable, "-c", _SERVE, "--app-dir", app_dir, "--port", str(port)]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
            start_new_session=True, preexec_fn=child_setup(os.getpid()),
        )
        try:
            os.environ["PREFECT_API_URL"] = url
            os.environ[PRIVATE_API_ENV] = "1"
            if while_starting is not None:
                while_starting()
            wait_healthy(proc, url, timeout=STARTUP_TIMEOUT_SECONDS, tail=lambda: _tail(errors))
            yield url
        finally:
            os.environ.pop("PREFECT_API_URL", None)
            os.environ.pop(PRIVATE_API_ENV, None)
            _stop_server(proc)


#: The child: uvicorn serving Prefect's API (as Prefect's ephemeral mode does: UI and
#: services off) in a thread, so uvicorn installs no signal handlers; SIGINT and SIGTERM are
#: ignored (a terminal's Ctrl-C, or a service manager's SIGTERM to the whole group, is the
#: CLI's to handle: it still needs its API to finish the run); it stops when its stdin closes
#: (the CLI is done, or gone) and dies with the CLI (PR_SET_PDEATHSIG, ``children.child_setup``).
_SERVE = """
import os, signal, sys, threading
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.path.insert(0, sys.argv[sys.argv.index("--app-dir") + 1])
import uvicorn
port = int(sys.argv[sys.argv.index("--port") + 1])
config = uvicorn.Config("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
                        log_level="error", lifespan="on")
server = uvicorn.Server(config)
thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
thread.start()
eof = threading.Event()
threading.Thread(target=lambda: (sys.stdin.buffer.read(), eof.set()), daemon=True).start()
while thread.is_alive() and not eof.wait(0.2):  # until the CLI closes stdin, or the server fails
    pass
server.should_exit = True
thread.join(15)
sys.stderr.flush()
# uvicorn has shut the app down (its lifespan: services stopped, every write committed); the
# interpreter's own teardown of the server's ~2,000 modules took 1-2 s of CPU for nothing
os._exit(0 if server.started and not thread.is_alive() else 1)
"""


def _stop_server(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Ask the API child to stop (its stdin closes), kill it if it does not within ``timeout``."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate a child process, kill it if it does not exit within ``timeout``, reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_healthy(
    proc: subprocess.Popen,
    url: str,
    *,
    timeout: float,
    tail: Callable[[], str],
    what: str = "the Prefect API server",
    error: type[Exception] = PrefectAPIError,
) -> None:
    """Until ``url``/health answers 200: ``error`` (with ``tail()``, the end of its output)
    if the process exits first or nothing answers within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise error(f"{what} exited with {proc.returncode}: {tail()}")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            interrupt.sleep(0.1)  # Ctrl-C while the server starts: stop waiting
    raise error(f"{what} did not answer within {timeout:.0f} s")


def _tail(errors) -> str:
    errors.seek(0)
    return errors.read().decode(errors="replace")[-2000:]
