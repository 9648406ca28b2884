"""The deployments, defined once: ``rtk-archiver serve`` builds them from here, and
``deployments/prefect.yaml`` (for ``prefect deploy --all``) says the same (a test keeps the two
in step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from rtk_archiver.settings import Settings

# The directory that holds the flows/ package (a checkout, or site-packages for an installed
# wheel): entrypoints ("flows/poll.py:poll_recordings") are relative to it, never to the
# current directory.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
            "verify-archive", "weekly-verify", "flows/verify.py:verify_archive",
            "Every week: check every archived file against its sidecar; re-archive what is missing or corrupt.",
            interval=timedelta(days=7),
            # one scrub at a time (each paces its own storage operations); a second one waits
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        ),
    ]


def module_entrypoint(entrypoint: str) -> str:
    """``flows/poll.py:poll_recordings`` -> ``flows.poll.poll_recordings`` (imported, not read
    from a path: the same from any directory)."""
    path, _, func = entrypoint.partition(":")
    if not path.endswith(".py") or not func:
        raise ValueError(f"entrypoint {entrypoint!r} is not <package/module.py>:<flow function>")
    return f"{path.removesuffix('.py').replace('/', '.')}.{func}"


def load_flow(entrypoint: str):
    """The flow ``entrypoint`` names, imported as a module (works from any directory)."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(module_entrypoint(entrypoint), use_placeholder_flow=False)
