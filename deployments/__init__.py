"""The deployments, defined once: ``rtk-archiver serve`` builds them from here, and
``deployments/prefect.yaml`` (for ``prefect deploy --all``) says the same (a test keeps the two
in step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from rtk_archiver.settings import Settings


@dataclass(frozen=True)
class DeploymentSpec:
    flow_name: str
    name: str
    entrypoint: str
    description: str
    interval: timedelta | None = None
    concurrency_limit: ConcurrencyLimitConfig | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"


def specs(settings: Settings) -> list[DeploymentSpec]:
    return [
        DeploymentSpec(
            "poll-recordings",
            "scheduled-poll",
            "flows/poll.py:poll_recordings",
            "Every few minutes: archive what stopped since the last poll. Never runs twice at once.",
            interval=timedelta(minutes=settings.archive_poll_interval_minutes),
            # a new run while one is going is cancelled, not queued
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            parameters={"overlap_minutes": settings.archive_poll_overlap_minutes},
        ),
        DeploymentSpec(
            "archive-manual", "manual", "flows/manual.py:archive_manual",
            "Archive one recording, a list of ids, or a whole meeting, now.",
        ),
        DeploymentSpec(
            "backfill-recordings", "backfill", "flows/backfill.py:backfill",
            "Archive a past date range, window by window, fanned out over the workers.",
        ),
        DeploymentSpec(
            "archive-recordings", "archive-window", "flows/archive.py:archive_recordings",
            "Archive one time window (the backfill's child runs).",
        ),
        DeploymentSpec(
            "check-destinations", "check-destinations", "flows/check.py:check_destinations",
            "Preflight: write, stat, read back and delete a probe at every destination a run would use.",
        ),
    ]


def load_flow(entrypoint: str):
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint)
