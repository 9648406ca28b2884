"""``check-destinations``: the preflight (``tasks/check.py``) as a flow, runnable from the UI.

It publishes the table as an artifact and fails when any destination fails.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from flows.failure import failed_on_purpose, quiet_expected_tracebacks
from flows.parameters import OptionalDateTime, form_field
from flows.windows import DESTINATION_HELP, OptionalDestination
from rtk_archiver.settings import load_settings
from tasks.check import CheckReport, markdown_table, run_check


class DestinationCheckFailed(Exception):
    """At least one destination cannot be archived to (the table says which and why)."""


@flow(name="check-destinations", validate_parameters=True)
def check_destinations(
    since: OptionalDateTime = form_field(
        None, "Recordings since", "Check the storage_configs of the recordings that stopped from here (default: the lookback)."
    ),
    until: OptionalDateTime = form_field(None, "Recordings until", "... up to here (default: now)."),
    destination: OptionalDestination = form_field("", "Destination", DESTINATION_HELP),  # a text box; empty: not given
    include_recordings: bool = form_field(
        True, "Include the recordings' storage configs", "Also check every destination the recordings' storage_configs name."
    ),
) -> CheckReport:
    """Write, stat, read back and delete a probe at every destination a run would use: the
    default destination, ``destination`` if given, and the storage_configs of the recordings
    in [since, until) (default: the lookback)."""
    quiet_expected_tracebacks()
    logger = get_run_logger()
    report = run_check(load_settings(), since, until, destination, include_recordings)
    table = markdown_table(report)
    create_markdown_artifact(key="destination-check", markdown="# Destination check\n\n" + table, description="rtk-archiver check")
    for c in report.checks:
        if c.status == "failed":
            logger.error("%s (%s): %s; fix: %s", c.destination, c.source, c.reason, c.fix)
        else:
            logger.info("%s (%s): %s %s", c.destination, c.source, c.status, ", ".join(c.works) or c.reason or "")
    if report.failed:
        message = f"{len(report.failed)} of {len(report.checks)} destination(s) failed the check"
        logger.error("Check failed: %s", message)
        failed_on_purpose()
        return Failed(message=message, data=DestinationCheckFailed(message))  # type: ignore[return-value]
    return report
