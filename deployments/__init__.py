"""The deployments, defined once: ``rtk-archiver serve`` builds them from here, and
``deployments/prefect.yaml`` (for ``prefect deploy --all``) says the same (a test keeps the two
in step). With them goes one automation, ``rtk-archiver-crash-dead-runs``: a run of the
archiver's flows whose heartbeats stop (its process died: host lost, OOM kill, SIGKILL) is
marked Crashed (README, "When a run dies")."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from rtk_archiver.settings import Settings, flow_run_env

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


def job_variables(settings: Settings) -> dict[str, Any]:
    """The work pool's job variables of every deployment (``rtk-archiver deploy``; the same in
    prefect.yaml): each flow-run process heartbeats every ARCHIVE_HEARTBEAT_SECONDS."""
    return {"env": flow_run_env(settings)}


# --- Dead runs: heartbeats and the automation that marks their absence Crashed -------------
# Every flow of the project (also archive-one, which the CLI runs): the automation only ever
# touches runs of these flows, never another project's on a shared server.
ARCHIVER_FLOWS = (
    "poll-recordings", "archive-manual", "backfill-recordings", "archive-recordings", "archive-one",
    "verify-archive", "check-destinations",
)
CRASH_AUTOMATION = "rtk-archiver-crash-dead-runs"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
# A run is watched from the moment it is Pending (its process may die before its first
# heartbeat, or before it is even Running); each heartbeat starts the clock again.
WATCH_FROM = {HEARTBEAT_EVENT} | {f"prefect.flow-run.{s}" for s in ("Pending", "Running", "Retrying")}
# ... until it is over, or waits on purpose without a process (a flow retry, a pause)
WATCH_UNTIL = {HEARTBEAT_EVENT} | {
    f"prefect.flow-run.{s}"
    for s in ("Running", "Retrying", "Completed", "Failed", "Cancelled", "Crashed", "AwaitingRetry", "Paused", "Suspended")
}


def crashed_runs_automation(settings: Settings):
    """A run of the archiver's flows with no heartbeat (nor end) for ARCHIVE_CRASHED_AFTER_SECONDS
    since its last heartbeat (or since it became Pending / Running) is marked Crashed: a
    proactive trigger, Prefect's "zombie flow runs" recipe, scoped to this project's flows."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    seconds = settings.archive_crashed_after_seconds
    return AutomationCore(
        name=CRASH_AUTOMATION,
        description=(
            f"rtk-archiver: a run of its flows without a heartbeat for {seconds} s is marked Crashed (its process "
            "died: host lost, OOM kill, SIGKILL); the next poll or a rerun archives its recordings."
        ),
        enabled=True,
        trigger=EventTrigger(
            posture=Posture.Proactive,
            after=WATCH_FROM,
            expect=WATCH_UNTIL,
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(ARCHIVER_FLOWS)},
            for_each={"prefect.resource.id"},  # one clock per flow run
            threshold=1,
            within=timedelta(seconds=seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                name="Crashed",
                message=(
                    f"No heartbeat for {seconds} s: the process running this flow run died (host lost, OOM kill, "
                    "SIGKILL). Nothing partial is at a final name; the next poll or a rerun archives its recordings."
                ),
            )
        ],
    )


def apply_crashed_runs_automation(settings: Settings, client=None) -> str:
    """Create or update the automation (by name): the same whichever of serve / deploy runs,
    however often. Returns "created", "updated" or "unchanged"."""
    from prefect.client.orchestration import get_client

    wanted = crashed_runs_automation(settings)
    if client is None:
        with get_client(sync_client=True) as client:
            return apply_crashed_runs_automation(settings, client)
    existing = sorted(client.read_automations_by_name(CRASH_AUTOMATION), key=lambda a: str(a.id))
    for extra in existing[1:]:  # two serves that started at once: keep one
        client.delete_automation(extra.id)
    if not existing:
        client.create_automation(wanted)
        return "created"
    have = existing[0]
    fields = set(type(wanted).model_fields)
    # compared as models (python mode: the event sets compare as sets, in any order)
    if type(wanted).model_validate(have.model_dump(include=fields)).model_dump() == wanted.model_dump():
        return "unchanged"
    client.update_automation(have.id, wanted)
    return "updated"
