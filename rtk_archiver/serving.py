"""``rtk-archiver serve``: run the deployments in this process until SIGTERM or Ctrl-C.

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
longer than ``STOP_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

STOP_TIMEOUT_SECONDS = 30.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve(deployments: Sequence[Any], *, limit: int | None = None) -> int:
    """Serve ``deployments`` (RunnerDeployment) until SIGTERM/SIGINT; returns the exit status."""
    from prefect.runner import Runner

    runner = Runner(limit=limit, pause_on_shutdown=True)
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
    if runner.started:
        await runner.astop()
    try:
        await running
    except asyncio.CancelledError:
        pass
