"""Prefect flows: which recordings, in what order, how many at once."""

import os

from rtk_archiver.interrupt import redeliver_swallowed_signals
from rtk_archiver.memory import tune_malloc
from rtk_archiver.serving import follow_serve

tune_malloc()  # before any flow runs (the CLI imports flows before it starts threads)
follow_serve()  # a flow-run process of `rtk-archiver serve` dies with it, even if serve is SIGKILLed
if "PREFECT__FLOW_RUN_ID" in os.environ:  # a flow-run process (serve's, a worker's); the CLI takes its signals itself
    redeliver_swallowed_signals()  # a SIGTERM / Ctrl-C that lands in a finalizer is not lost (it is sent again)
