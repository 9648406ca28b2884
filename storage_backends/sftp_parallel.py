"""Parallel SFTP uploads: extra connections, each in a worker process of its own
(``sftp_worker.py``), writing disjoint ranges of the one temp file.

Why processes: paramiko builds, encrypts and sends every 32 KiB SSH packet from Python, so an
upload is CPU-bound in one interpreter, under the same GIL as the download and the sha256.
The download stays one stream in the archiver (its resume, refresh and error-page checks and
the in-order sha256 are unchanged: the bytes hashed are exactly the bytes handed out); the
uploading is spread over the archiver's own connection and up to N-1 worker connections.

How a put goes (``SFTPBackend.put`` with a known size of at least ``PARALLEL_MIN_BYTES``):

* the archiver's connection creates the temp file (empty) as for any put;
* the workers (started on the first such put, reused by the backend's later puts, stopped by
  ``close``) connect and authenticate on their own, against the host key the archiver
  verified; until one is ready, the archiver writes the chunks itself, so a slow start costs
  nothing and a server that refuses the extra connections (MaxStartups, MaxSessions, a limit
  per user) leaves the upload on the one connection;
* each chunk read from the source (1 MiB, in order) goes to one writer, which writes it at
  its offset: the chunks are disjoint and together cover ``[0, size)``;
* at the end every worker closes its file handle, which waits for the server's status of each
  of its writes, and answers the bytes acknowledged; the upload counts only if every writer
  acknowledged exactly what it was given and their sum is ``size``; then the server's size
  check and the no-clobber rename (``SFTPBackend.put``), as for one connection.

Any failure of a worker during a put (a refused write, a lost connection, a worker that dies
or stalls for ``ARCHIVE_UPLOAD_STALL_SECONDS``) fails the put: the temp file is removed and
nothing is at the final name (the task retries the file). Memory: the pipes to the workers
(kernel buffers, 1 MiB each) plus one chunk in hand; each worker holds one chunk.
"""

from __future__ import annotations

import array
import fcntl
import json
import logging
import os
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

from rtk_archiver.children import child_setup

from .base import PermanentStorageError, StorageError
from .sftp_worker import FRAME

WORKER_SCRIPT = str(Path(__file__).with_name("sftp_worker.py"))
#: files smaller than this are uploaded over the one connection: no worker is started for them
PARALLEL_MIN_BYTES = 16 * 1024 * 1024
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
PIPE_BYTES = 1024 * 1024

log = logging.getLogger(__name__)


class WorkerFailed(StorageError):
    """A worker connection failed during a put: the put fails (and is retried as a whole)."""


class Worker:
    """One worker process and its pipes."""

    def __init__(self, conf: dict, index: int) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            [sys.executable, WORKER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, close_fds=True,
            preexec_fn=child_setup(os.getpid()),  # a worker writing to a stalled server dies with the run
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.fd_in, self.fd_out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        try:
            fcntl.fcntl(self.fd_in, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # the default pipe size works too
        try:
            self.capacity = fcntl.fcntl(self.fd_in, F_GETPIPE_SZ)
        except OSError:
            self.capacity = 65536
        os.set_blocking(self.fd_in, False)
        self.state = "starting"  # -> ready | dead
        self.reason = ""
        self.sent = 0  # bytes given during the current put
        self._lines = b""
        self.send(b"C", 0, json.dumps(conf).encode(), deadline=time.monotonic() + 10)

    # -- messages -------------------------------------------------------------------------------
    def send(self, kind: bytes, offset: int, payload: bytes | memoryview, *, deadline: float) -> None:
        """A frame, written whole before ``deadline`` (else ``WorkerFailed``)."""
        for part in (FRAME.pack(kind, offset, len(payload)), payload):
            view = memoryview(part)
            while view:
                try:
                    n = os.write(self.fd_in, view)
                except BlockingIOError:
                    n = 0
                except (BrokenPipeError, OSError) as exc:
                    self.state = "dead"
                    raise WorkerFailed(f"SFTP upload connection {self.index} ended: {type(exc).__name__}") from None
                view = view[n:]
                if view:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        self.state = "dead"
                        raise WorkerFailed(f"SFTP upload connection {self.index} made no progress before the stall timeout")
                    select.select([], [self.fd_in], [], min(wait, 1.0))
                    self._check_alive()

    def room(self) -> int:
        """Bytes the pipe to the worker can take now without blocking."""
        queued = array.array("i", [0])
        try:
            fcntl.ioctl(self.fd_in, termios.FIONREAD, queued)
        except OSError:
            return 0
        return self.capacity - queued[0]

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            self.state = "dead"
            raise WorkerFailed(f"SFTP upload connection {self.index} stopped (exit {self.proc.returncode})")

    def messages(self, timeout: float = 0.0) -> list[dict]:
        """Whole lines the worker has written so far (waiting up to ``timeout`` for one)."""
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.fd_out], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return out
            data = os.read(self.fd_out, 65536)
            if not data:  # the worker exited
                if self.state != "dead":
                    self.state = "dead"
                    self.reason = self.reason or f"exited (code {self.proc.poll()})"
                return out
            self._lines += data
            *lines, self._lines = self._lines.split(b"\n")
            for line in lines:
                if line.strip():
                    out.append(json.loads(line))
            if out:
                return out

    def poll_start(self) -> None:
        """Ready once connected; dead if it could not connect."""
        if self.state != "starting":
            return
        for m in self.messages():
            if m.get("ready"):
                self.state = "ready"
            elif "error" in m:
                self.state, self.reason = "dead", m["error"]
                self.permanent = bool(m.get("permanent"))

    def answer(self, deadline: float) -> dict:
        while True:
            wait = deadline - time.monotonic()
            if wait <= 0:
                self.state = "dead"
                raise WorkerFailed(f"SFTP upload connection {self.index} did not finish before the stall timeout")
            got = self.messages(min(wait, 1.0))
            if got:
                return got[0]
            if self.state == "dead" or self.proc.poll() is not None:
                self.state = "dead"
                raise WorkerFailed(f"SFTP upload connection {self.index} stopped before finishing")

    def stop(self) -> None:
        try:
            if self.proc.poll() is None and self.state != "dead":
                self.send(b"Q", 0, b"", deadline=time.monotonic() + 1)
        except StorageError:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=3)
        self.state = "dead"


class WriterPool:
    """Up to ``count`` worker connections for one backend, started on first use."""

    def __init__(self, conf: dict, count: int, where: str) -> None:
        self.conf, self.count, self.where = conf, count, where
        self.workers: list[Worker] = []
        self.refused: str | None = None  # why the workers could not connect, once known

    def start(self) -> None:
        if not self.workers and self.count > 0:
            self.workers = [Worker(self.conf, i + 1) for i in range(self.count)]

    def ready(self) -> list[Worker]:
        for w in self.workers:
            if w.state == "starting":
                w.poll_start()
                if w.state == "dead":
                    log.info("SFTP %s: extra upload connection %d not used: %s", self.where, w.index, w.reason)
                    if getattr(w, "permanent", False):
                        self.refused = w.reason
        return [w for w in self.workers if w.state == "ready"]

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []


class ParallelUpload:
    """One put's chunks spread over the archiver's own file handle and the ready workers."""

    def __init__(self, pool: WriterPool, tmp: str, local, stall_seconds: float) -> None:
        self.pool, self.tmp, self.local, self.stall = pool, tmp, local, stall_seconds
        self.active: list[Worker] = []  # workers that opened this put's temp file
        self.local_bytes = 0
        self._turn = 0
        self._checked = 0.0

    def _join_ready(self) -> None:
        now = time.monotonic()
        if now - self._checked < 0.01 and self.active:
            return
        self._checked = now
        for w in self.pool.ready():
            if w not in self.active:
                w.sent = 0
                w.send(b"O", 0, self.tmp.encode(), deadline=now + self.stall)
                self.active.append(w)

    def write(self, offset: int, chunk: bytes) -> None:
        """``chunk`` to be written at ``offset``, by a worker if one is ready, else here."""
        self._join_ready()
        if not self.active:
            self.local.seek(offset)
            self.local.write(chunk)
            self.local_bytes += len(chunk)
            return
        # the worker with the emptiest pipe: one busy waiting for its server's acknowledgements
        # (paramiko settles its pipelined writes now and then) does not hold up the others
        self._turn += 1
        n = len(self.active)
        w = max((self.active[(self._turn + i) % n] for i in range(n)), key=Worker.room)
        w.send(b"W", offset, chunk, deadline=time.monotonic() + self.stall)
        w.sent += len(chunk)

    def finish(self) -> int:
        """Every worker's writes acknowledged by the server: the bytes written in all."""
        deadline = time.monotonic() + self.stall
        for w in self.active:
            w.send(b"F", 0, b"", deadline=deadline)
        total = self.local_bytes
        errors = []
        for w in self.active:
            try:
                m = w.answer(time.monotonic() + self.stall)
            except WorkerFailed as exc:
                errors.append(str(exc))
                continue
            if "error" in m:
                errors.append(f"connection {w.index}: {m['error']}")
            elif m.get("done") != w.sent:
                errors.append(f"connection {w.index} acknowledged {m.get('done')} of the {w.sent} bytes it was given")
            else:
                total += w.sent
        if errors:
            raise WorkerFailed(f"parallel SFTP upload of {self.tmp} failed: " + "; ".join(errors))
        return total

    def abort(self) -> None:
        """After a failure: the workers drop this put (their handles closed) or are stopped."""
        for w in self.active:
            if w.state == "dead":
                w.stop()
                continue
            try:
                w.send(b"F", 0, b"", deadline=time.monotonic() + 5)
                w.answer(time.monotonic() + 5)
            except StorageError:
                w.stop()
        self.pool.workers = [w for w in self.pool.workers if w.state != "dead"]


__all__ = ["PARALLEL_MIN_BYTES", "ParallelUpload", "PermanentStorageError", "WorkerFailed", "WriterPool"]
