"""Backfills: archive a past date range, split into windows fanned out as child flow runs.

When the ``archive-recordings/archive-window`` deployment exists (``rtk-archiver serve`` or
``prefect deploy --all``), each window is a flow run of that deployment, so a pool of
workers shares the work, at most ``parallelism`` windows at once; otherwise the windows run
as subflows of this run. Re-running over the same or an overlapping range is safe and
cheap: archiving is idempotent (already archived recordings transfer 0 bytes), so an
interrupted backfill is resumed by running it again.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from typing import Annotated

from pydantic import Field

from flows.archive import archive_recordings
from flows.windows import DESTINATION_HELP, DestinationParam, Window, split_range

WINDOW_DEPLOYMENT = "archive-recordings/archive-window"


def _window_deployment_exists() -> bool:
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(WINDOW_DEPLOYMENT)
        return True
    except ObjectNotFound:
        return False


@flow(name="backfill-recordings", validate_parameters=True)
def backfill(
    # constraints in the annotation, default and description in Field(): Prefect's form shows both
    start: datetime = Field(description="Start of the range (a past date or date-time, UTC if no zone)."),
    end: datetime = Field(description="End of the range (not in the future)."),
    window_hours: Annotated[float, Field(gt=0, le=24 * 31)] = Field(24, description="Size of each window, in hours."),
    parallelism: Annotated[int, Field(ge=1, le=64)] = Field(4, description="Windows archived at once."),
    destination: DestinationParam = Field(None, description=DESTINATION_HELP),
    dry_run: bool = Field(False, description="Only report what would be archived."),
) -> list[dict]:
    """Archive every recording that stopped in [start, end), window by window."""
    logger = get_run_logger()
    start = start if start.tzinfo else start.replace(tzinfo=timezone.utc)
    end = end if end.tzinfo else end.replace(tzinfo=timezone.utc)
    if end > datetime.now(timezone.utc) + timedelta(minutes=5):
        raise ValueError("end must not be in the future: the scheduled poll covers what is still to come")
    windows = split_range(start, end, timedelta(hours=window_hours))
    fan_out = _window_deployment_exists()
    logger.info(
        "Backfill of %d window(s) from %s to %s, %d at once, as %s",
        len(windows), start.isoformat(), end.isoformat(), parallelism,
        "runs of " + WINDOW_DEPLOYMENT if fan_out else "subflows",
    )

    def run(window: Window) -> dict:
        params = {"since": window.since, "until": window.until, "destination": destination, "dry_run": dry_run}
        name = f"window {window.since:%Y-%m-%d %H:%M} to {window.until:%Y-%m-%d %H:%M}"
        if fan_out:
            child = run_deployment(WINDOW_DEPLOYMENT, parameters=params, flow_run_name=name, timeout=None, poll_interval=2)
            state = child.state
        else:
            state = archive_recordings.with_options(flow_run_name=name)(**params, return_state=True)
        return {"window": name, "state": state.name if state else "unknown", "ok": bool(state and state.is_completed())}

    if fan_out:
        # each thread runs in a copy of this run's context, so the children are its subflows
        contexts = [contextvars.copy_context() for _ in windows]
        with ThreadPoolExecutor(max_workers=parallelism) as pool:
            results = list(pool.map(lambda ctx, w: ctx.run(run, w), contexts, windows))
    else:
        results = [run(w) for w in windows]
    create_table_artifact(table=results, key="rtk-backfill", description="Backfill windows")
    failed = [r["window"] for r in results if not r["ok"]]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(windows)} window(s) did not complete: {', '.join(failed)}; run the backfill again to resume")
    return results
