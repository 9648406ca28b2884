"""``rtk-archiver serve``: run the deployments in this process until SIGTERM or Ctrl-C.

Its Prefect API: ``PREFECT_API_URL`` (environment or Prefect profile) when set; otherwise a
Prefect server WITH its services, scheduler included, started here as a child process on
127.0.0.1:``PREFECT_SERVER_API_PORT`` (4200) over ``PREFECT_HOME``'s database, and stopped with
serve. (Prefect's own fallback, a temporary ephemeral server, runs no scheduler: the poll's
schedule would never fire.)

Prefect 3.8.8's own ``serve()`` does not stop on SIGTERM: its handler calls the async
``Runner.stop()`` from inside the running event loop (a coroutine that is never awaited, so the
flow runs in progress are never cancelled) and raises ``SystemExit`` in the middle of the loop;
with a run in flight the process then hangs after "Pausing all deployments...". Here both
signals only set an event; the runner is then stopped from inside its loop, as Prefect means
it to be:

- the flow runs in progress are cancelled (state Cancelled; nothing partial is ever at a final
  name, and the poll's mark has not moved, so the next poll takes their recordings again);
- the deployments' schedules are paused (the next ``serve`` resumes them);
- the process exits with status 0.

A second signal while stopping exits at once (status 128 + signal), as does a stop that takes
longer than ``STOP_TIMEOUT_SECONDS``. A flow-run process that outlives its SIGTERM by
``STRAGGLER_SECONDS`` is killed (``_kill_stragglers_after``).

SIGKILL (``kill -9``, the OOM killer) cannot be handled; the flow-run processes serve started
die with it all the same (``follow_serve``, run by every flow-run process when it imports the
flows: ``PR_SET_PDEATHSIG`` with SIGKILL), so a restarted serve never works beside runs of the
dead one. Those runs then stop heartbeating, and the deployments' automation marks them Crashed
after ``ARCHIVE_CRASHED_AFTER_SECONDS`` (``deployments.crashed_runs_automation``); the next
poll, or a rerun, archives their recordings (README, "When a run dies").
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rtk_archiver.children import die_with_parent

STOP_TIMEOUT_SECONDS = 30.0
#: flow-run processes still alive this long after serve began to stop are killed (_stop)
STRAGGLER_SECONDS = 10.0
#: set by serve for the flow-run processes it starts: its pid (see ``follow_serve``)
SERVE_PID_ENV = "RTK_ARCHIVER_SERVE_PID"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SERVER_STARTUP_TIMEOUT_SECONDS = 180.0  # the first start migrates a new database
SERVER_LOG_NAME = "rtk-archiver-server.log"


class ServeError(RuntimeError):
    """serve cannot start (its Prefect server did not come up); the message says why."""


@contextmanager
def prefect_api() -> Iterator[str | None]:
    """The configured Prefect API, or a Prefect server with its services started for serve.
    Yields the started server's API URL (None when one was configured)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        yield None
        return
    host = "127.0.0.1"
    port = settings.server.api.port
    url = f"http://{host}:{port}/api"
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            raise ServeError(
                f"PREFECT_API_URL is not set and port {port} is in use (a Prefect server already running?): "
                f"set PREFECT_API_URL=http://{host}:{port}/api to use it, or PREFECT_SERVER_API_PORT to another port"
            )
    home = Path(settings.home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / SERVER_LOG_NAME
    cmd = [sys.executable, "-c", _SERVER_LAUNCHER, str(os.getpid()), "server", "start", "--host", host, "--port", str(port)]
    print(f"rtk-archiver serve: PREFECT_API_URL is not set: starting a Prefect server (scheduler included) on "
          f"{url} (database in {home}, log {log_path})", flush=True)
    with open(log_path, "ab") as log:
        # its own session: a terminal's Ctrl-C stops serve, and serve stops the server after it
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        from rtk_archiver.prefect_api import wait_healthy

        wait_healthy(
            proc, url, timeout=SERVER_STARTUP_TIMEOUT_SECONDS, what=f"the Prefect server (log {log_path})",
            tail=lambda: log_path.read_text(errors="replace")[-2000:], error=ServeError,
        )
        os.environ["PREFECT_API_URL"] = url
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()  # every thread, and every flow-run process, uses it
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# `python -m prefect <args>`, set to get SIGTERM when serve dies, even by SIGKILL (Linux's
# PR_SET_PDEATHSIG survives exec), so that no server is left holding the port.
_SERVER_LAUNCHER = """
import ctypes, os, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, 15)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("rtk-archiver serve exited before its Prefect server started")
os.execv(sys.executable, [sys.executable, "-m", "prefect", *sys.argv[2:]])
"""


def serve(deployments: Sequence[Any], *, limit: int | None = None, heartbeat_seconds: int | None = None) -> int:
    """Serve ``deployments`` (RunnerDeployment) until SIGTERM/SIGINT; returns the exit status.
    ``heartbeat_seconds``: the flow-run processes' heartbeat period (ARCHIVE_HEARTBEAT_SECONDS)."""
    from prefect.runner import Runner

    # inherited by every flow-run process: they die with this one (follow_serve)
    os.environ[SERVE_PID_ENV] = str(os.getpid())
    runner = Runner(limit=limit, pause_on_shutdown=True, heartbeat_seconds=heartbeat_seconds)
    for deployment in deployments:
        runner.add_deployment(deployment)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
    print(f"rtk-archiver serve: serving {names} (pid {os.getpid()}; SIGTERM or Ctrl-C stops)", flush=True)
    return asyncio.run(_serve(runner))


async def _serve(runner: Any) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(sig: int) -> None:
        if received:  # a second signal while stopping: leave now
            print(f"rtk-archiver serve: {signal.Signals(sig).name} again, exiting at once", file=sys.stderr, flush=True)
            os._exit(128 + sig)
        received.append(sig)
        stop.set()

    running = asyncio.ensure_future(runner.start())
    # Runner.start() installs its own SIGTERM handler before anything else (the one that does
    # not work, see above): let it run that far, then take both signals over.
    await asyncio.sleep(0)
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():  # the runner ended by itself (an error): report it
        stopping.cancel()
        running.result()
        return 0
    name = signal.Signals(received[0]).name
    print(f"rtk-archiver serve: {name} received, cancelling runs in progress and stopping", flush=True)
    try:
        await asyncio.wait_for(_stop(runner, running), STOP_TIMEOUT_SECONDS)
    except asyncio.TimeoutError:
        print(f"rtk-archiver serve: not stopped after {STOP_TIMEOUT_SECONDS:.0f} s, exiting", file=sys.stderr, flush=True)
        os._exit(128 + received[0])
    print("rtk-archiver serve: stopped", flush=True)
    return 0


async def _stop(runner: Any, running: asyncio.Future) -> None:
    stragglers = asyncio.ensure_future(_kill_stragglers_after(STRAGGLER_SECONDS))
    try:
        if runner.started:
            await runner.astop()
        try:
            await running
        except asyncio.CancelledError:
            pass
    finally:
        stragglers.cancel()


async def _kill_stragglers_after(seconds: float) -> list[int]:
    """SIGKILL the flow-run processes still alive ``seconds`` after the stop began. The runner
    SIGTERMs each run it cancels and waits up to 30 s before its own SIGKILL; a flow-run process
    normally ends within a second or two, but Prefect's SIGTERM handler raises an exception
    wherever the process happens to be, and raised inside a finalizer (a weakref callback) it is
    only printed ("Exception ignored in ...") and the run goes on (seen under load: serve still
    running 20 s after SIGTERM). The runner then sees the process gone and marks the run
    Cancelled; a temp file it leaves is removed by the next run's first upload into its directory."""
    await asyncio.sleep(seconds)
    killed = []
    for pid in flow_run_processes():
        print(f"rtk-archiver serve: flow-run process {pid} still running {seconds:.0f} s after the stop began: killing it",
              file=sys.stderr, flush=True)
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def flow_run_processes(serve_pid: int | None = None) -> list[int]:
    """The flow-run processes of this serve (or of the serve ``serve_pid``): its children started
    with ``SERVE_PID_ENV`` set to its pid (the Prefect server serve may start is launched before
    that is set)."""
    me = os.getpid() if serve_pid is None else serve_pid
    marker = f"{SERVE_PID_ENV}={me}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            parent = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == me and marker in Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def follow_serve() -> None:
    """In a flow-run process started by ``serve``: die with serve, however serve ends (Linux:
    the kernel sends SIGKILL when serve's process ends, ``PR_SET_PDEATHSIG``). A serve that is
    already gone: exit now, run nothing. Anywhere else (the CLI, a worker's flow runs, serve
    itself): nothing. Called once per process when the flows are imported (``flows/__init__``).

    It also leaves serve's process group, so that a Ctrl-C reaches serve only (which cancels the
    run); a Ctrl-C in the instant before this runs still reaches it.

    SIGKILL, not SIGTERM: the process ends at once, as if its host were lost, which every
    write path already survives (nothing partial at a final name; a stale temp file is
    removed by the next write of that name); a SIGTERMed run would wait for its transfer
    threads and keep transferring beside the restarted serve."""
    raw = os.environ.get(SERVE_PID_ENV, "")
    if not raw.isdigit() or int(raw) == os.getpid():
        return
    serve_pid = int(raw)
    os.environ.pop(SERVE_PID_ENV, None)  # not for processes this one starts
    if not die_with_parent(signal.SIGKILL):  # not Linux: the heartbeat automation still marks such runs Crashed
        return
    if os.getppid() != serve_pid:  # serve died before the line above
        print(f"rtk-archiver: the serve process ({serve_pid}) that started this flow run is gone: not running it",
              file=sys.stderr, flush=True)
        os._exit(1)
    # Out of serve's process group: Ctrl-C in serve's terminal signals the whole foreground group,
    # and a SIGINT here would race serve's own cancellation (KeyboardInterrupt wherever this
    # process happens to be, printed as a traceback when that is a finalizer). serve cancels its
    # runs itself on Ctrl-C (the runner's SIGTERM), and this process still dies with serve (above).
    try:
        os.setpgid(0, 0)
    except OSError:  # already a group / session leader: nothing to leave
        pass
    # and off serve's terminal: a read from it in a background group would stop this process
    # (SIGTTIN), heartbeats and all, until a SIGKILL
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    except OSError:
        pass
