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
    triggers: list[Any] = field(default_factory=list)  # DeploymentEventTrigger: runs started by events

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
            triggers=[archive_on_upload_trigger()],
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
        DeploymentSpec(
            "check-destinations", "check-destinations", "flows/check.py:check_destinations",
            "Preflight: write, stat, read back and delete a probe at every destination a run would use.",
        ),
    ]


def module_entrypoint(entrypoint: str) -> str:
    """``flows/poll.py:poll_recordings`` -> ``flows.poll.poll_recordings`` (imported, not read
    from a path: the same from any directory)."""
    path, _, func = entrypoint.partition(":")
    if not path.endswith(".py") or not func:
        raise ValueError(f"entrypoint {entrypoint!r} is not <package/module.py>:<flow function>")
    return f"{path.removesuffix('.py').replace('/', '.')}.{func}"


# The webhook receiver (rtk_archiver/webhook.py) emits this event when RealtimeKit says a
# recording is UPLOADED; each one starts a manual run for that recording. The id is checked
# twice: by the receiver before emitting, and by ManualRequest's pattern when the run is created.
UPLOADED_EVENT = "rtk.recording.uploaded"
UPLOADED_TRIGGER_PARAMETERS = {"request": {"recording_ids": ["{{ event.resource.id.split('.')[-1] }}"]}}


def archive_on_upload_trigger():
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="archive-on-upload",
        description="A recording reached UPLOADED (webhook): archive it now.",
        expect={UPLOADED_EVENT},
        match={"prefect.resource.id": "rtk.recording.*"},
        for_each={"prefect.resource.id"},  # one bucket per recording
        parameters=UPLOADED_TRIGGER_PARAMETERS,
    )


def load_flow(entrypoint: str):
    """The flow ``entrypoint`` names, imported as a module (works from any directory)."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(module_entrypoint(entrypoint), use_placeholder_flow=False)
