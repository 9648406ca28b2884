"""Ctrl-C / SIGTERM during a CLI run: stop in-flight transfers cleanly, report, exit 130 / 143.

A process-wide request flag: ``watch_signals`` (the CLI) turns SIGINT / SIGTERM into it;
the transfer loops (``tasks/transfer.py``, ``rtk_archiver/streams.py``) call ``check``
between reads and raise ``Interrupted``, so the backend aborts the upload the way it aborts
any failing source (temp file removed, S3 multipart aborted, GCS resumable upload never
finalized). ``Interrupted`` is permanent: Prefect does not retry it.

Signals are taken with ``sigtimedwait`` in a thread of their own, with both signals blocked in
every other thread: no Python-level handler runs for them, so neither Prefect's SIGTERM
bridge nor the default KeyboardInterrupt can crash the flow half-way. A second signal, or a
run that has not wound down ``grace`` seconds after the first, exits at once (``os._exit``;
the private Prefect API child goes with it, see ``prefect_api``).

Elsewhere (flow-run processes of ``serve`` and of workers) Prefect's SIGTERM bridge and Python's
KeyboardInterrupt raise wherever the main thread is; ``redeliver_swallowed_signals`` makes sure
one that lands in a finalizer is not lost.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REASON_PREFIX = "interrupted by "

_requested = threading.Event()
_signum: int | None = None


class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C / SIGTERM). Never retried."""

    permanent = True

    def __init__(self, signum: int | None = None) -> None:
        self.signum = signum
        super().__init__(
            f"{REASON_PREFIX}{signal_name(signum)} before it was archived: nothing partial was kept; "
            "the next run archives it"
        )


def signal_name(signum: int | None) -> str:
    if signum is None:
        return "request"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int | None) -> int:
    """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + (signum or signal.SIGINT)


def request(signum: int | None = signal.SIGINT) -> None:
    """Ask every transfer of this process to stop (what a signal does; tests call it)."""
    global _signum
    if not _requested.is_set():
        _signum = signum
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def received_signal() -> int | None:
    return _signum if _requested.is_set() else None


def reset() -> None:
    global _signum
    _requested.clear()
    _signum = None


def check() -> None:
    """Raise ``Interrupted`` if the run was asked to stop."""
    if _requested.is_set():
        raise Interrupted(_signum)


def sleep(seconds: float) -> None:
    """``time.sleep`` that ends (raising ``Interrupted``) as soon as the run is asked to stop."""
    if _requested.wait(max(0.0, seconds)):
        raise Interrupted(_signum)


def is_interrupt_reason(reason: str | None) -> bool:
    """Whether a failure reason is an ``Interrupted`` one."""
    return bool(reason) and reason.startswith(REASON_PREFIX)  # type: ignore[union-attr]


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"rtk-archiver: {message}\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a closed stderr must not stop the shutdown
        pass


def _exit_now(signum: int, why: str) -> None:
    _say(why)
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    os._exit(exit_code(signum))


def _watch(grace: float, done: threading.Event) -> None:
    while True:
        info = signal.sigtimedwait(SIGNALS, 0.5)
        # CPython returns an uninitialised siginfo (a signal number like 1198092880) when
        # the wait is interrupted (EINTR: a stop / continue, another signal) just as its
        # timeout runs out: only SIGINT / SIGTERM are stop requests
        if info is not None and info.si_signo in SIGNALS:
            break
        if done.is_set():  # the run ended without a signal
            return
    signum = info.si_signo
    request(signum)
    name = signal_name(signum)
    _say(
        f"{name} received: stopping (transfers in flight are aborted, nothing partial is kept); "
        f"{name} again exits at once"
    )
    deadline = time.monotonic() + grace
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            _exit_now(signum, f"the run did not stop within {grace:.0f} s of {name}: exiting now")
        info = signal.sigtimedwait(SIGNALS, left)
        if info is not None and info.si_signo in SIGNALS:
            _exit_now(info.si_signo, f"{signal_name(info.si_signo)} again: exiting at once")


@contextmanager
def watch_signals(grace: float = 20.0) -> Iterator[None]:
    """Turn SIGINT / SIGTERM into a stop request for the duration of a CLI run.

    Call from the main thread before any other thread starts: threads inherit the blocked
    mask, so the watcher thread is the only one the signals are delivered to. Children must
    unblock them (``unblock_in_child``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(grace, done), name="rtk-signal-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        if not _requested.is_set():
            # nobody signalled: stop watching and give the signals back their usual meaning
            # (after an interrupt the watcher stays, for a second signal during the shutdown)
            done.set()
            watcher.join(2)
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock_in_child() -> None:
    """For a child process (``preexec_fn``): the default signal mask, whatever the parent's."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


#: re-deliveries of a signal swallowed by a finalizer, at most (then Python's own report)
REDELIVER_LIMIT = 5
REDELIVER_DELAY_SECONDS = 0.05
_previous_unraisablehook = None
_redelivered = 0


def redeliver_swallowed_signals() -> None:
    """A signal handler that raises (Prefect's SIGTERM bridge in a flow-run process, Python's
    KeyboardInterrupt) runs wherever the main thread happens to be. When that is a finalizer or
    a weakref callback, Python cannot raise it: it prints "Exception ignored in ..." with a
    traceback, and the run goes on as if no signal had come (seen: a cancelled run that kept
    transferring until serve killed it). From here on such a signal is sent again, shortly and
    from another thread, so that it lands in ordinary code; up to ``REDELIVER_LIMIT`` times.
    Idempotent; called once per process when the flows are imported (``flows/__init__``)."""
    global _previous_unraisablehook
    if _previous_unraisablehook is not None:
        return
    _previous_unraisablehook = sys.unraisablehook
    sys.unraisablehook = _unraisable


def _swallowed_signal(exc: BaseException | None) -> int | None:
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    # Prefect's TerminationSignal, recognised without importing Prefect (the direct path never does)
    if any(c.__name__ == "TerminationSignal" and c.__module__.startswith("prefect") for c in type(exc).__mro__):
        signum = getattr(exc, "signal", None)
        return signum if isinstance(signum, int) else None
    return None


def _unraisable(args) -> None:  # noqa: ANN001 - sys.UnraisableHookArgs
    global _redelivered
    signum = _swallowed_signal(args.exc_value)
    if signum is None or _redelivered >= REDELIVER_LIMIT:
        _previous_unraisablehook(args)
        return
    _redelivered += 1
    _say(f"{signal_name(signum)} arrived inside a finalizer, where it cannot stop the run: delivering it again")
    timer = threading.Timer(REDELIVER_DELAY_SECONDS, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
