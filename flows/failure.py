"""A run that fails on purpose ends its log with its failure message, not a traceback.

A flow that finds failed recordings (or a damaged archive, a failed window, a destination
that fails the check) returns a Failed state carrying its report; the run's log already says
what failed, and the state's message says it again. When such a run ends in a flow-run process
(``serve``, a worker), Prefect's engine then raises the state's data and logs "Engine execution
exited with unexpected exception" with a traceback (a ``TypeError`` when the data is a report,
not an exception): read after the real message, it looks like a crash. ``failed_on_purpose``
leaves that one record out of the run's log for the Failed state the flow returned; any other
error (a real crash) is logged as before. No Prefect import: a logging filter by message.

``quiet_expected_tracebacks`` (installed when a run starts) does the same for the errors the
archiver raises on purpose, each with a message that says what failed and what to do (a
destination refused, a download that failed its checks...): Prefect logs a failed task or flow
with the exception's traceback; for these the line keeps the message and drops the traceback.
An error from anywhere else (a bug: ``TypeError``, ``KeyError``...) keeps its traceback.
"""

from __future__ import annotations

import logging
import threading

#: Prefect's message (prefect/flow_engine.py, ``run_flow``) when the run's result raises
ENGINE_RAISED = "Engine execution exited with unexpected exception"

_lock = threading.Lock()
#: set once this process's flow returned a Failed state on purpose (then the filter is installed)
_failed_on_purpose = threading.Event()


class _DropEngineRaise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_failed_on_purpose.is_set() and record.msg == ENGINE_RAISED)


#: where the archiver's own errors are defined (their messages are meant for the operator)
OWN_PACKAGES = ("storage_backends.", "tasks.", "rtk_archiver.", "flows.")


class _DropOwnTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__module__.startswith(OWN_PACKAGES):
            record.exc_info, record.exc_text = None, None
        return True


_quiet_installed = False


def quiet_expected_tracebacks() -> None:
    """Idempotent: Prefect's task and flow run loggers leave out the traceback of the
    archiver's own errors (the message stays)."""
    global _quiet_installed
    with _lock:
        if not _quiet_installed:
            for name in ("prefect.task_runs", "prefect.flow_runs"):
                logging.getLogger(name).addFilter(_DropOwnTracebacks())
            _quiet_installed = True


def failed_on_purpose() -> None:
    """Called by a flow just before it returns its Failed state (its message says what failed)."""
    with _lock:
        if not _failed_on_purpose.is_set():
            logging.getLogger("prefect.flow_runs").addFilter(_DropEngineRaise())
            _failed_on_purpose.set()
