"""The Prefect run logger inside a flow or task run, a plain logger outside one (``task.fn``)."""

from __future__ import annotations

import logging
import sys


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    if "prefect" not in sys.modules:  # no run without Prefect; not imported for a log line (flows.direct)
        return logging.getLogger("rtk_archiver")
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("rtk_archiver")
