"""What coordinates runs and workers, and what it costs: per batch, never per recording, and
nothing that a restart of the Prefect server can leave stuck. (README: "Limits and locks on a
server".)

* **The same recording in two runs at once**: the destination itself decides. The archive
  task writes a claim sidecar (no-clobber) before any file, naming its holder (host, pid) and
  renewed every ``CLAIM_RENEW_SECONDS`` while it transfers (``ClaimKeeper``). A run that meets
  a *live* claim of another holder waits for it (checking every ``CLAIM_POLL_SECONDS``),
  then finds the recording archived; a claim whose holder is gone (its process no longer exists on this host,
  or it was not renewed for ``CLAIM_TTL_SECONDS``) is taken over. No Prefect state at all, so
  nothing for a server restart to lose. (This replaces the 64 ``rtk-recording-lock-*`` global
  concurrency limits: a lease-held slot per recording, two API round trips each.)
* ``rtk-realtimekit-api``: a rate limit (slot decay) on RealtimeKit API calls, shared by every
  run and worker. No lease: its slots are counted in the server's database and decay with
  time, so a restart cannot leak them.
* ``rtk-transfers-<backend>``: how many transfers run at once per backend kind, over every run
  and worker. Taken per batch: a run takes up to ``min(ARCHIVE_MAX_TRANSFERS_PER_BACKEND,
  ARCHIVE_MAX_CONCURRENT, transfers to do)`` slots in one call, under one lease renewed in the
  background, and hands them to its own tasks (``transfer_gate``), then gives them back in one
  call. Leases live in the server's memory (Prefect's default lease storage): a restarted
  server forgets them while the slots stay counted in its database. ``check_leases`` finds that
  out (a canary lease, ``rtk-lease-canary``, whose id is kept in a Prefect Variable, is gone)
  and sets the transfer limits' active slots back to 0; every run checks when it starts, and a
  run waiting for slots or losing its lease checks again. Runs that were transferring across
  the restart take a new lease (or carry on without one, exceeding the cap for what is left of
  their batch: never a hang).

They apply when runs share a Prefect server (``PREFECT_API_URL`` set: ``serve``, workers,
tests). With Prefect's embedded, per-process API, or the private API server ``rtk-archiver
archive`` starts for itself (``rtk_archiver.prefect_api``), there is nothing to share: only
the claims apply (they need no server).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from uuid import UUID

import httpx

from rtk_archiver.prefect_api import private_api_active
from rtk_archiver.settings import Settings
from storage_backends.registry import KINDS
from storage_backends.tempnames import pid_alive

log = logging.getLogger("rtk_archiver.limits")

API_RATE_LIMIT = "rtk-realtimekit-api"
TRANSFER_LIMIT = "rtk-transfers-{kind}"
BACKEND_KINDS = KINDS  # one transfer limit per registered backend
LEASE_SECONDS = 60.0  # the server's minimum; renewed every LEASE_SECONDS / 4
CANARY_LIMIT = "rtk-lease-canary"
CANARY_VARIABLE = "rtk_archiver_lease_canary"
CANARY_LEASE_SECONDS = 86400.0  # the server's maximum; renewed by every check
WAIT_CHECK_SECONDS = 30.0  # a run waiting this long for transfer slots checks for lost leases

#: the claim sidecar (tasks/archive.py) as a lock: renewed by its holder while it transfers
CLAIM_RENEW_SECONDS = 30.0
CLAIM_TTL_SECONDS = 120.0
#: a run meeting another's live claim checks again this often (then finds it archived, or
#: takes over a claim whose holder is gone), for at most CLAIM_WAIT_SECONDS (then: pending)
CLAIM_POLL_SECONDS = 1.0
CLAIM_WAIT_SECONDS = 3600.0


def shared_limits_available() -> bool:
    """True when runs share a Prefect server (not the embedded, per-process one, nor the
    private one the CLI starts for a single run). Prefect is imported by the functions that
    talk to it, not here: a flow body run without Prefect (``flows.direct``, no API) never
    imports it (~80 MiB of memory)."""
    if "prefect" not in sys.modules and not os.environ.get("PREFECT_API_URL"):
        return False
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url) and not private_api_active()


def wanted_limits(settings: Settings) -> dict[str, tuple[int, float | None]]:
    """name -> (slots, slot decay per second or None)."""
    rate = settings.archive_api_requests_per_second
    limits: dict[str, tuple[int, float | None]] = {API_RATE_LIMIT: (max(1, int(rate)), rate)}
    for kind in BACKEND_KINDS:
        limits[TRANSFER_LIMIT.format(kind=kind)] = (settings.archive_max_transfers_per_backend, None)
    limits[CANARY_LIMIT] = (1000, None)
    return limits


def ensure_limits(settings: Settings) -> None:
    """Create or update the limits (one API read when they exist), then ``check_leases``."""
    if not shared_limits_available():
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    wanted = wanted_limits(settings)
    with get_client(sync_client=True) as client:
        existing = {gcl.name: gcl for gcl in client.read_global_concurrency_limits(limit=200, offset=0)}
        for name, (slots, decay) in wanted.items():
            have = existing.get(name)
            if have is None:
                try:
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=slots, slot_decay_per_second=decay or 0.0)
                    )
                except ObjectAlreadyExists:  # another run created it meanwhile
                    pass
            elif have.limit != slots or (decay is not None and have.slot_decay_per_second != decay):
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=slots, slot_decay_per_second=decay or 0.0)
                )
        for name in existing:  # the per-recording locks of earlier versions: unused now
            if name.startswith("rtk-recording-lock-"):
                try:
                    client.delete_global_concurrency_limit_by_name(name)
                except ObjectNotFound:
                    pass
        _check_leases(client)


# -- the API rate limit ------------------------------------------------------------------------

def api_throttle() -> None:
    """Take one slot of the shared API rate limit (waits while the rate is exceeded)."""
    if shared_limits_available():
        from prefect.concurrency.sync import rate_limit

        rate_limit(API_RATE_LIMIT, occupy=1, strict=False)


# -- lost leases (a restarted server) -------------------------------------------------------

def _gone(exc: BaseException) -> bool:
    """A lease the server does not know (404/410)."""
    from prefect.exceptions import ObjectNotFound

    if isinstance(exc, ObjectNotFound):
        return True
    response = getattr(exc, "response", None)
    return isinstance(exc, httpx.HTTPStatusError) and response is not None and response.status_code in (404, 410)


def _new_canary(client) -> UUID | None:
    try:
        response = client.increment_concurrency_slots_with_lease(
            names=[CANARY_LIMIT], slots=1, mode="concurrency", lease_duration=CANARY_LEASE_SECONDS
        )
    except httpx.HTTPStatusError as exc:
        log.warning("could not take the lease canary (%s); lost leases are not detected until the next run", exc)
        return None
    return UUID(response.json()["lease_id"])


def _check_leases(client) -> bool:
    """True when the server lost its leases since the last check (it restarted: the canary
    lease is gone); then every transfer limit's active slots are set back to 0 (the slots of
    leases nobody can release any more) and a new canary is taken. Two API calls when nothing
    was lost."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.variables import Variable

    value = Variable.get(CANARY_VARIABLE, default=None)
    found = value.get("lease_id") if isinstance(value, dict) else None
    if found:
        try:
            client.renew_concurrency_lease(UUID(found), lease_duration=CANARY_LEASE_SECONDS)
            return False
        except Exception as exc:  # noqa: BLE001
            if not _gone(exc):
                raise
        current = Variable.get(CANARY_VARIABLE, default=None)
        if isinstance(current, dict) and current.get("lease_id") != found:
            return True  # another run found it out first and has reset the limits
        for kind in BACKEND_KINDS:
            try:
                client.update_global_concurrency_limit(
                    TRANSFER_LIMIT.format(kind=kind), GlobalConcurrencyLimitUpdate(active_slots=0)
                )
            except ObjectNotFound:
                pass
        log.warning(
            "The Prefect server has lost its concurrency leases (restarted?): the transfer limits' slots "
            "held before are released"
        )
    lease = _new_canary(client)
    if lease is not None:
        value = {"lease_id": str(lease), "at": datetime.now(timezone.utc).isoformat()}
        try:
            Variable.set(CANARY_VARIABLE, value, overwrite=True)
        except ObjectAlreadyExists:  # another run created it between the read and the write: theirs will do
            pass
    return found is not None


def check_leases() -> bool:
    if not shared_limits_available():
        return False
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return _check_leases(client)


# -- the transfer cap, per batch ----------------------------------------------------------

class _Batch:
    """Slots of one transfer limit held by this run under one lease, renewed in the background."""

    def __init__(self, name: str, wanted: int) -> None:
        self.name = name
        self.wanted = wanted
        self.slots = 0
        self.lease: UUID | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _try(self, client, slots: int) -> tuple[bool, float]:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[self.name], slots=slots, mode="concurrency", lease_duration=LEASE_SECONDS
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:
                return False, float(exc.response.headers.get("Retry-After", 1.0))
            raise
        self.lease, self.slots = UUID(response.json()["lease_id"]), slots
        return True, 0.0

    def acquire(self) -> None:
        """As many slots as are free, up to ``wanted``; waits for at least one."""
        from prefect.client.orchestration import get_client

        waited_since = time.monotonic()
        with get_client(sync_client=True) as client:
            while True:
                limit = client.read_global_concurrency_limit_by_name(self.name)
                if not limit.active:
                    return
                free = max(1, min(self.wanted, limit.limit - limit.active_slots, limit.limit))
                for slots in sorted({free, 1}, reverse=True):
                    ok, retry_after = self._try(client, slots)
                    if ok:
                        break
                if ok:
                    break
                if time.monotonic() - waited_since > WAIT_CHECK_SECONDS:
                    _check_leases(client)  # slots a restarted server can no longer release?
                    waited_since = time.monotonic()
                time.sleep(min(max(retry_after, 0.2), 5.0) * random.uniform(0.5, 1.0))
        self._thread = threading.Thread(target=self._keep, name=f"rtk-lease-{self.name}", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        from prefect.client.orchestration import get_client

        while not self._stop.wait(LEASE_SECONDS / 4):
            try:
                with get_client(sync_client=True) as client:
                    with self._lock:
                        if self.lease is None:
                            return
                        try:
                            client.renew_concurrency_lease(self.lease, lease_duration=LEASE_SECONDS)
                            continue
                        except Exception as exc:  # noqa: BLE001
                            if not _gone(exc):
                                raise
                        # the server forgot the lease (restarted): heal, then take the slots again
                        log.warning("The Prefect server lost this run's lease on %s; taking it again", self.name)
                        _check_leases(client)
                        self.lease = None
                        ok, _ = self._try(client, self.slots)
                        if not ok:
                            log.warning("%s is full after the server restart: this run finishes its batch "
                                        "without a slot", self.name)
                            return
            except Exception as exc:  # noqa: BLE001 - the server may be restarting: try again later
                log.debug("renewing the lease on %s failed: %s", self.name, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            lease, self.lease = self.lease, None
        if lease is None:
            return
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(lease)
        except Exception as exc:  # noqa: BLE001 - a lost lease: check_leases frees its slots
            log.debug("releasing the lease on %s failed: %s", self.name, exc)


_gates: dict[tuple[str, str], threading.BoundedSemaphore] = {}


def _flow_run_id() -> str:
    from prefect.context import FlowRunContext, TaskRunContext

    task = TaskRunContext.get()
    if task is not None and task.task_run.flow_run_id is not None:
        return str(task.task_run.flow_run_id)
    flow = FlowRunContext.get()
    return str(flow.flow_run.id) if flow is not None and flow.flow_run is not None else f"pid-{os.getpid()}"


@contextmanager
def transfer_slots(transfers: Mapping[str, int], settings: Settings) -> Iterator[None]:
    """For one run's batch of transfers (backend kind -> how many): take the backend's transfer
    slots in one call each and hold them until the batch is done; the run's archive tasks share
    them (``transfer_gate``)."""
    if not shared_limits_available() or not any(transfers.values()):
        yield
        return
    run = _flow_run_id()
    batches: list[tuple[str, _Batch]] = []
    try:
        for kind, count in sorted(transfers.items()):
            if count <= 0:
                continue
            wanted = min(count, settings.archive_max_transfers_per_backend, settings.archive_max_concurrent)
            batch = _Batch(TRANSFER_LIMIT.format(kind=kind), wanted)
            batches.append((kind, batch))
            batch.acquire()
            if batch.slots:
                _gates[(run, kind)] = threading.BoundedSemaphore(batch.slots)
        yield
    finally:
        for kind, batch in batches:
            _gates.pop((run, kind), None)
            batch.release()


@contextmanager
def transfer_gate(backend_kind: str) -> Iterator[None]:
    """One of the run's transfer slots for this backend while a recording is archived (a local
    semaphore: no API call)."""
    gate = _gates.get((_flow_run_id(), backend_kind)) if _gates else None
    if gate is None:
        yield
        return
    with gate:
        yield


# -- the claim sidecar as a lock --------------------------------------------------------------

HOST = socket.gethostname()


def claim_holder() -> dict[str, object]:
    return {"host": HOST, "pid": os.getpid()}


#: claim tokens of this process's attempts in progress (a claim of this process whose token is
#: not here is a finished or dead attempt's: a retry takes it over, the scrub checks it)
live_tokens: set[str] = set()


def claim_is_live(
    holder: Mapping[str, object] | None, renewed_at: datetime, token: str | None = None, now: datetime | None = None
) -> bool:
    """A claim whose holder is still archiving. The one liveness rule (archiving, the scrub):
    a claim of this process is live while its attempt runs (its token in ``live_tokens``);
    else it must be renewed within CLAIM_TTL_SECONDS by a process that, on this host, still
    exists. A claim without a holder (an older version's, or a hand-made one) is never live:
    it is taken over at once, as before."""
    if not holder:
        return False
    pid = holder.get("pid")
    if holder.get("host") == HOST and pid == os.getpid():
        return token is not None and token in live_tokens
    now = now or datetime.now(timezone.utc)
    if (now - renewed_at).total_seconds() > CLAIM_TTL_SECONDS:
        return False
    if holder.get("host") == HOST and isinstance(pid, int):
        return pid_alive(pid)
    return True
