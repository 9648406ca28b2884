"""Child processes that die with the process that started them (Linux: ``PR_SET_PDEATHSIG``).

Used for every helper process the archiver starts: the CLI's private Prefect API server
(``prefect_api``), the SFTP upload workers (``storage_backends.sftp_parallel``), and, from the
child's side, the flow-run processes of ``serve`` (``serving.follow_serve``). The signal fires
even when the parent is SIGKILLed, so no helper is left running, or writing, after it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

from rtk_archiver.interrupt import unblock_in_child

PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # this process's own libc: ctypes.util.find_library would run ldconfig, a child process
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """From now on this process gets ``sig`` when its parent ends; False where that cannot be
    arranged (not Linux). The caller checks ``os.getppid()`` afterwards: a parent that died
    before this call is not signalled."""
    prctl = _prctl()
    return prctl is not None and prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0


def child_setup(parent: int) -> Callable[[], None]:
    """``preexec_fn`` for a child that must die with ``parent`` (this process): SIGKILL on the
    parent's death (it fires when the thread that started the child exits; start children from
    the main thread), exit if the parent already died, and the default signal mask (the CLI
    blocks SIGINT / SIGTERM in its threads, see ``rtk_archiver.interrupt``). Everything it needs
    is resolved before the fork."""
    prctl = _prctl()

    def setup() -> None:
        unblock_in_child()
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: follow it
            os._exit(1)

    return setup
