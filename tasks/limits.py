"""Limits shared by every run and worker, as Prefect global concurrency limits.

* ``rtk-realtimekit-api``: a rate limit (slot decay) on RealtimeKit API calls, so that a
  backfill fanned out over many workers cannot exhaust the token's quota.
* ``rtk-transfers-<backend>``: how many transfers run at once per backend kind.
* ``rtk-recording-lock-<n>``: 64 one-slot locks; a recording takes the one its id hashes to
  while it is archived, so two runs over overlapping ranges, on different workers, never
  archive the same recording at the same time (the second one then finds it archived).

``ensure_limits`` creates or updates them (each flow calls it at start; one API read when
they already exist). They apply when runs share a Prefect server (``PREFECT_API_URL`` set:
``serve``, workers, tests). With Prefect's embedded, per-process API (a plain CLI run) there
is nothing to share, and its lease reaper does not run, so a killed run's slot would never be
freed: nothing is limited there (uploads are atomic all the same). The same holds for the
private API server ``rtk-archiver archive`` starts for itself (``rtk_archiver.prefect_api``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency, rate_limit
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import get_current_settings

from rtk_archiver.prefect_api import private_api_active
from rtk_archiver.settings import Settings
from storage_backends.registry import KINDS

API_RATE_LIMIT = "rtk-realtimekit-api"
TRANSFER_LIMIT = "rtk-transfers-{kind}"
RECORDING_LOCK = "rtk-recording-lock-{n}"
RECORDING_LOCKS = 64
BACKEND_KINDS = KINDS  # one transfer limit per registered backend
LEASE_SECONDS = 60  # the server's minimum


def shared_limits_available() -> bool:
    """True when runs share a Prefect server (not the embedded, per-process one, nor the
    private one the CLI starts for a single run)."""
    return bool(get_current_settings().api.url) and not private_api_active()


def wanted_limits(settings: Settings) -> dict[str, tuple[int, float | None]]:
    """name -> (slots, slot decay per second or None)."""
    rate = settings.archive_api_requests_per_second
    limits: dict[str, tuple[int, float | None]] = {API_RATE_LIMIT: (max(1, int(rate)), rate)}
    for kind in BACKEND_KINDS:
        limits[TRANSFER_LIMIT.format(kind=kind)] = (settings.archive_max_transfers_per_backend, None)
    for n in range(RECORDING_LOCKS):
        limits[RECORDING_LOCK.format(n=n)] = (1, None)
    return limits


def ensure_limits(settings: Settings) -> None:
    if not shared_limits_available():
        return
    wanted = wanted_limits(settings)
    with get_client(sync_client=True) as client:
        existing = {}
        offset = 0
        while True:
            page = client.read_global_concurrency_limits(limit=200, offset=offset)
            existing.update({gcl.name: gcl for gcl in page})
            if len(page) < 200:
                break
            offset += 200
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


def api_throttle() -> None:
    """Take one slot of the shared API rate limit (waits while the rate is exceeded)."""
    if shared_limits_available():
        rate_limit(API_RATE_LIMIT, occupy=1, strict=False)


def recording_lock_name(recording_id: str) -> str:
    n = int.from_bytes(hashlib.sha256(recording_id.encode()).digest()[:4], "big") % RECORDING_LOCKS
    return RECORDING_LOCK.format(n=n)


@contextmanager
def archiving_slot(recording_id: str, backend_kind: str) -> Iterator[None]:
    """Hold the recording's lock, then a transfer slot of its backend, while archiving it."""
    if not shared_limits_available():
        yield
        return
    # short leases (renewed while held): a killed run's slots free up within LEASE_SECONDS
    with concurrency(recording_lock_name(recording_id), occupy=1, strict=False, lease_duration=LEASE_SECONDS):
        with concurrency(TRANSFER_LIMIT.format(kind=backend_kind), occupy=1, strict=False, lease_duration=LEASE_SECONDS):
            yield

