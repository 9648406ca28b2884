"""Test session setup: project defaults, one Prefect test harness per session (per xdist
worker), server fixtures, and the order files are handed to the workers (slowest first).

``pytest`` runs the suite on several workers (pyproject: ``-n 3 --dist loadfile``): every
session-scoped fixture (servers, the harness) is per worker, a test file runs whole on one
worker (its module-scoped fixtures and its tests' shared server stay together), and each
worker has its own PREFECT_HOME. ``pytest -n0 ...`` runs in one process."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from rtk_archiver.settings import apply_project_defaults

apply_project_defaults()
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# The shared API rate limit defaults to Cloudflare's 4 requests/s; the simulator needs none.
os.environ.setdefault("ARCHIVE_API_REQUESTS_PER_SECOND", "200")

# A PREFECT_HOME of this session's own (of this worker's, in parallel; set before Prefect is
# imported): CLI runs without a PREFECT_API_URL start a private Prefect API over its SQLite
# database, and two workers (or two checkouts) must not share one (~/.prefect).
_worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
_prefect_home = tempfile.mkdtemp(prefix=f"rtk-test-prefect-home-{_worker}-")
os.environ["PREFECT_HOME"] = _prefect_home
atexit.register(shutil.rmtree, _prefect_home, ignore_errors=True)

import pytest  # noqa: E402

pytest_plugins = [
    "tests.fixtures.simulator",
    "tests.fixtures.object_stores",
    "tests.fixtures.sshd",
    "tests.fixtures.prefect_server",
]

# Fixtures that start real servers for a test file, and their weight (seconds, roughly): the
# session's prefect server; PostgreSQL with a prefect server and workers (test_scale_out.py).
_SLOW_FIXTURES = {"prefect_server": 60, "postgres": 240}


def pytest_collection_modifyitems(session, config, items):
    """Test files with the most end-to-end work first (stable otherwise): with ``--dist
    loadfile`` the workers take files in this order, so the long files do not come last. A
    file's weight: 60 per ``slow`` test, the servers it starts, a fifth for any other test."""
    weights: dict[str, float] = {}
    servers: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        weights[path] = weights.get(path, 0) + (60 if item.get_closest_marker("slow") else 0.2)
        used = set(getattr(item, "fixturenames", ()))
        servers[path] = max(servers.get(path, 0), sum(w for name, w in _SLOW_FIXTURES.items() if name in used))
    items.sort(key=lambda item: -(weights[item.nodeid.split("::")[0]] + servers[item.nodeid.split("::")[0]]))


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (it takes 10-15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
