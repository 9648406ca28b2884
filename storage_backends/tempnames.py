"""Temp names for uploads that are renamed into place (local, SFTP), and when to look for
abandoned ones.

``.<head of the name>.<digest of the whole name>.rtkpart-<writer>``: the digest makes the
prefix belong to exactly one final name (two names sharing their first characters never
share a prefix), and the whole temp name stays far below 255 bytes whatever the final name.

A killed upload leaves its temp file behind. Finding it means listing its directory, which
costs the whole directory: every archived recording is in it (a flat archive of 10,000
recordings holds ~30,000 names). Listing it on every upload made each upload O(directory):
over SFTP on loopback 4 ms per 64 KiB upload in an empty directory, 87 ms beside 3,000 files,
768 ms beside 30,000 (paramiko reads a listing ~100 names per round trip: ~24 s at 80 ms).
So each process looks through a directory for abandoned temp files (of any name) on its first
upload there, and again once ``SWEEP_SECONDS`` have passed (``Sweeps``): a run after a killed
run removes what it left, on its first upload into that directory; and the archive task asks
again (``StorageBackend.remove_abandoned``) when it takes over a recording an earlier attempt
left unfinished, whose temp file may have appeared after this process looked. A temp file
this process could not remove itself (the connection dropped mid-upload) is known by name: the
next upload into that directory removes it, without a listing (the retry leaves nothing
behind). Only exact temp names are considered (``temp_writer``: the digest where it can be
checked, and each backend's own writer part), so a user's look-alike file is never touched.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Hashable

TEMP_MARKER = ".rtkpart-"
HEAD_BYTES = 60


def temp_prefix(final_name: str) -> str:
    raw = final_name.encode("utf-8", "surrogatepass")
    head = raw[:HEAD_BYTES].decode("utf-8", "ignore")
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return f".{head}.{digest}{TEMP_MARKER}"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and TEMP_MARKER in name


def pid_alive(pid: int) -> bool:
    """A process of this host with that pid exists (the writer of a temp file or a claim)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


_TEMP_NAME = re.compile(r"\.(?P<head>.+)\.(?P<digest>[0-9a-f]{16})" + re.escape(TEMP_MARKER) + r"(?P<writer>.+)\Z", re.S)

#: how often one process looks through a directory it uploads to for abandoned temp files
SWEEP_SECONDS = 600.0


def temp_writer(name: str, writer: re.Pattern[str]) -> str | None:
    """The writer part of a name ``temp_prefix`` + a writer part matching ``writer`` (each
    backend's own form); None for any other name, so that a user's file is never taken for a
    temp file. The digest is checked against the head when the head is the whole final name
    (names up to HEAD_BYTES); a longer name's head is HEAD_BYTES long (up to 3 bytes less where
    a character was cut), and its digest cannot be checked without the name."""
    match = _TEMP_NAME.match(name)
    if match is None or not writer.fullmatch(match.group("writer")):
        return None
    head = match.group("head")
    size = len(head.encode("utf-8", "surrogatepass"))
    if temp_prefix(head) == name[: len(name) - len(match.group("writer"))]:
        return match.group("writer")  # the head is the whole name, and the digest is its own
    return match.group("writer") if HEAD_BYTES - 3 <= size <= HEAD_BYTES else None


class Sweeps:
    """Which directories this process looked through for abandoned temp files, and when:
    ``due(where)`` is true for the first upload into ``where``, then once every ``every``
    seconds (the caller then lists it; the other uploads go on without waiting). And the temp
    files this process left behind, by directory (``left_behind``, ``take_left``)."""

    def __init__(self, every: float = SWEEP_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self._clock = every, clock
        self._last: dict[Hashable, float] = {}
        self._left: dict[Hashable, set[str]] = {}
        self._lock = threading.Lock()

    def left_behind(self, where: Hashable, name: str) -> None:
        """A temp file of this process's that its failed upload could not remove."""
        with self._lock:
            self._left.setdefault(where, set()).add(name)

    def take_left(self, where: Hashable) -> list[str]:
        """This process's temp files left behind in ``where`` (to remove now; the caller gives
        back with ``left_behind`` what it still cannot remove)."""
        with self._lock:
            return sorted(self._left.pop(where, ()))

    def remove_left(self, where: Hashable, remove: Callable[[str], bool]) -> None:
        """Remove this process's temp files left behind in ``where`` by name (``remove(name)``:
        whether it is gone now); the ones still there stay known."""
        for name in self.take_left(where):
            if not remove(name):
                self.left_behind(where, name)

    def due(self, where: Hashable) -> bool:
        """Whether the caller is to look through ``where`` now (then counted as looked)."""
        now = self._clock()
        with self._lock:
            last = self._last.get(where)
            if last is not None and now - last < self.every:
                return False
            self._last[where] = now
            return True

    def mark(self, where: Hashable) -> None:
        """The caller looks through ``where`` now, due or not."""
        with self._lock:
            self._last[where] = self._clock()

    def forget(self) -> None:
        """The next upload into any directory looks through it again."""
        with self._lock:
            self._last.clear()


#: this process's record (local and SFTP backends)
SWEEPS = Sweeps()
