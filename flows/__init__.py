"""Prefect flows: which recordings, in what order, how many at once."""

from rtk_archiver.memory import tune_malloc

tune_malloc()  # before any flow runs (the CLI imports flows before it starts threads)
