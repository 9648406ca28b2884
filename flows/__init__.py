"""Prefect flows: which recordings, in what order, how many at once."""

from rtk_archiver.memory import tune_malloc

tune_malloc()  # flow runs started by a worker or `serve` get the CLI's memory bound too
