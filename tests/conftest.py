"""Test session setup: project defaults, one Prefect test harness per session, server fixtures."""

from __future__ import annotations

import os

from rtk_archiver.settings import apply_project_defaults

apply_project_defaults()
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# The shared API rate limit defaults to Cloudflare's 4 requests/s; the simulator needs none.
os.environ.setdefault("ARCHIVE_API_REQUESTS_PER_SECOND", "200")

import pytest  # noqa: E402

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.object_stores",
    "tests.fixtures.sshd",
    "tests.fixtures.prefect_server",
]


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (it takes 10-15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
