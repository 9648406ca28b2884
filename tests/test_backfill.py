"""Backfills: windows planned from one listing (pure), and end to end through a real
``prefect server`` + ``rtk-archiver serve``: small backfills run in the parent, big ones fan
out to child runs of archive-window; a future end is cut to now; a failed window fails the
backfill."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from flows.windows import MIN_RECORDINGS_PER_CHILD, plan_windows

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
T1 = T0 + timedelta(days=10)


def spread(n: int, days: float = 10) -> list[datetime]:
    return [T0 + timedelta(seconds=(i + 0.5) * days * 86400 / n) for i in range(n)]


def check_cover(windows, times, start=T0, end=T1):
    """Consecutive, no gap or overlap, over [start, end); every time in exactly one window, counted."""
    assert windows[0].since == start and windows[-1].until == end
    for a, b in zip(windows, windows[1:]):
        assert a.until == b.since
    for w in windows:
        assert w.recordings == sum(1 for t in times if w.since <= t < w.until)
    assert sum(w.recordings for w in windows) == sum(1 for t in times if start <= t < end)


def test_small_backfill_is_one_window_over_the_whole_range():
    times = spread(100)
    windows = plan_windows(T0, T1, times, per_window=250, parallelism=4)
    assert [(w.since, w.until, w.recordings) for w in windows] == [(T0, T1, 100)]
    assert plan_windows(T0, T1, [], per_window=250, parallelism=4)[0].recordings == 0


def test_big_backfill_is_balanced_by_count_not_hours():
    # bursty: 900 recordings on day 2, 100 spread over the other days
    times = sorted([T0 + timedelta(days=2, seconds=i) for i in range(900)] + spread(100))
    windows = plan_windows(T0, T1, times, per_window=250, parallelism=2)
    check_cover(windows, times)
    assert len(windows) == 4 and all(w.recordings <= 250 for w in windows)


def test_a_backfill_just_over_one_window_spreads_over_the_workers():
    times = spread(300)
    windows = plan_windows(T0, T1, times, per_window=250, parallelism=4)
    check_cover(windows, times)
    assert len(windows) == 4 and min(w.recordings for w in windows) >= MIN_RECORDINGS_PER_CHILD
    # but never children of fewer than MIN_RECORDINGS_PER_CHILD
    assert len(plan_windows(T0, T1, spread(60), per_window=50, parallelism=8)) == 2


def test_recordings_with_the_same_time_stay_together_and_outsiders_are_ignored():
    times = [T0 + timedelta(hours=1)] * 7 + [T0 + timedelta(hours=2)] * 3 + [T0 - timedelta(hours=1), T1]
    windows = plan_windows(T0, T1, times, per_window=3)
    check_cover(windows, times)
    assert [w.recordings for w in windows] == [7, 3]


def test_window_hours_caps_the_span_and_leaves_out_empty_spans():
    times = [T0 + timedelta(hours=1), T0 + timedelta(hours=2), T0 + timedelta(days=5, hours=3)]
    windows = plan_windows(T0, T1, times, per_window=250, max_span=timedelta(hours=24))
    assert [(w.since, w.until, w.recordings) for w in windows] == [
        (T0, T0 + timedelta(days=1), 2), (T0 + timedelta(days=5), T0 + timedelta(days=6), 1)
    ]
    assert len(plan_windows(T0, T1, [], per_window=250, max_span=timedelta(hours=24))) == 1


@pytest.mark.parametrize("kw", [dict(per_window=0), dict(per_window=5, parallelism=0)])
def test_planning_rejects_bad_input(kw):
    with pytest.raises(ValueError):
        plan_windows(T0, T1, [], **kw)
    with pytest.raises(ValueError):
        plan_windows(T1, T0, [], per_window=5)


# -- following child runs through a failing API (pure: fake API calls) ---------------------------

def _http_error(code: int):
    import httpx

    req = httpx.Request("GET", "http://127.0.0.1:4200/api/flow_runs/x")
    return httpx.HTTPStatusError(f"{code}", request=req, response=httpx.Response(code, request=req))


class _Run:
    def __init__(self, state, name="child-1"):
        self.id, self.name, self.state = "id-1", name, state


def _window():
    from flows.windows import PlannedWindow

    return PlannedWindow(since=T0, until=T1, recordings=12)


def test_a_window_survives_transient_api_errors_and_reports_the_childs_final_state(monkeypatch):
    import logging

    import httpx
    from prefect.states import Completed, Failed, Running

    import flows.backfill as backfill

    monkeypatch.setattr(backfill, "CHILD_POLL_SECONDS", 0)
    created, answers = [], [_http_error(500), httpx.ConnectError("refused"), _Run(Running()), _http_error(503),
                             _Run(Completed())]

    def start():
        created.append(1)
        if len(created) == 1:
            raise _http_error(502)  # the answer was lost: created again with the same idempotency key
        return _Run(None)

    def read(_id):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    log = logging.getLogger("test")
    result = backfill.run_window(_window(), {}, "parent", log, read_flow_run=read, start=start)
    assert (result.ok, result.state, result.run, len(created), answers) == (True, "Completed", "child-1", 2, [])

    failed = backfill.run_window(_window(), {}, "parent", log, read_flow_run=lambda _id: _Run(Failed(message="2 of 12 failed")),
                                 start=lambda: _Run(None))
    assert (failed.ok, failed.state, failed.reason) == (False, "Failed", "2 of 12 failed")


def test_a_window_whose_run_cannot_be_followed_fails_alone_without_raising(monkeypatch):
    import logging

    import flows.backfill as backfill
    from prefect.exceptions import ObjectNotFound

    monkeypatch.setattr(backfill, "CHILD_POLL_SECONDS", 0)
    monkeypatch.setattr(backfill, "API_PATIENCE_SECONDS", 0)  # the first transient error is already too long
    log = logging.getLogger("test")

    def down(_id=None):
        raise _http_error(500)

    lost = backfill.run_window(_window(), {}, "p", log, read_flow_run=down, start=lambda: _Run(None))
    assert not lost.ok and lost.run == "child-1" and "HTTP 500" in lost.reason and "may still be running" in lost.reason
    never = backfill.run_window(_window(), {}, "p", log, read_flow_run=down, start=down)
    assert not never.ok and never.run == "none" and "could not be created" in never.reason

    def gone(_id):
        raise ObjectNotFound(http_exc=Exception("404"))

    monkeypatch.setattr(backfill, "API_PATIENCE_SECONDS", 600)  # not transient: no retry at all
    deleted = backfill.run_window(_window(), {}, "p", log, read_flow_run=gone, start=lambda: _Run(None))
    assert not deleted.ok and "ObjectNotFound" in deleted.reason


def test_patience_is_counted_from_the_first_failure():
    import logging

    from flows.backfill import with_patience

    now = [0.0]
    calls = []

    def failing():
        calls.append(now[0])
        raise _http_error(500)

    def sleep(s):
        now[0] += 10

    import pytest as _pytest
    with _pytest.raises(Exception, match="500"):
        with_patience(failing, "x", logging.getLogger("t"), patience=60, clock=lambda: now[0], sleep=sleep)
    assert calls == [0, 10, 20, 30, 40, 50, 60]
    with _pytest.raises(ValueError):  # not an API error: raised at once
        with_patience(lambda: (_ for _ in ()).throw(ValueError("bad")), "x", logging.getLogger("t"))


# -- end to end: a real prefect server (session fixture) and `rtk-archiver serve` ---------------

NO_CREDENTIALS = {"type": "sftp", "host": "127.0.0.1", "port": 1, "username": "u", "auth_method": "KEY"}
FAST_RUNNER = {"PREFECT_RUNNER_POLL_FREQUENCY": "1"}  # serve asks for due runs every second (default 10)


def _api(server, method: str, path: str, **kw):
    """The JSON of one request to the server's API (``PrefectServer.request``: retried while busy)."""
    r = server.request(method, path, **kw)
    r.raise_for_status()
    return r.json()


def _artifact(server, run_id: str, key: str):
    import json

    found = _api(server, "POST", "/artifacts/filter",
                 json={"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": [key]}}})
    assert found, f"no {key} artifact on run {run_id}"
    data = found[0]["data"]
    return json.loads(data) if isinstance(data, str) and data[:1] in "[{" else data


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_backfill_through_serve_fans_out_fails_with_a_window_and_runs_small_ones_itself(prefect_server, archiver_env, tmp_path):
    """~40-60 s on an idle machine: serve's start, a backfill of 2 child runs, a small re-run."""
    from tests.fixtures import wait_until
    from tests.fixtures.prefect_server import running_serve

    env, now = archiver_env, datetime.now(timezone.utc)
    good = [env.state.add_recording(file_size=20_000 + i, stopped_time=now - timedelta(days=3, hours=i)) for i in range(3)]
    # the last of the range, alone in the second window: fails (SFTP without credentials)
    bad = env.state.add_recording(file_size=1000, stopped_time=now - timedelta(days=2), storage_config=NO_CREDENTIALS)
    with running_serve(prefect_server.api_url, cwd=tmp_path, env=FAST_RUNNER) as serve:
        dep = wait_until(lambda: _find_deployment(prefect_server), 120, lambda: "serve's deployments:\n" + serve.log_text()[-3000:])

        def start(**parameters) -> str:
            params = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in parameters.items()}
            return _api(prefect_server, "POST", f"/deployments/{dep}/create_flow_run", json={"parameters": params})["id"]

        def final(run_id: str):
            state = _api(prefect_server, "GET", f"/flow_runs/{run_id}")["state"]
            return state if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        def wait(run_id: str) -> dict:
            return wait_until(lambda: final(run_id), 400, lambda: f"backfill {run_id}:\n" + serve.log_text()[-4000:], interval=1)

        # 4 recordings, 3 per window: 2 child runs (2 + 2); `end` two days ahead: cut to now
        run = start(start=now - timedelta(days=4), end=now + timedelta(days=2), recordings_per_window=3, parallelism=2)
        state = wait(run)
        assert state["type"] == "FAILED" and state["message"].startswith("1 of 2 window(s) did not complete"), state
        assert bad["id"] in state["message"]
        windows = _artifact(prefect_server, run, "rtk-backfill")
        assert [(w["recordings"], w["ok"]) for w in windows] == [(2, True), (2, False)], windows
        assert "is in the future: backfilled up to now" in _artifact(prefect_server, run, "rtk-backfill-summary")
        _assert_log_ends_with_its_message(prefect_server, run, state["message"])

        # a poll and a scrub that fail end their logs with their message too (was a raw
        # RecordingsFailed traceback / a TypeError after it)
        # (a recording that fails, stopped a minute ago: in the poll's window whatever mark other
        # tests left on the session's server)
        env.state.add_recording(file_size=1000, stopped_time=datetime.now(timezone.utc) - timedelta(minutes=1),
                                storage_config=NO_CREDENTIALS)
        for deployment, parameters in (("poll-recordings/scheduled-poll", {}),
                                       ("verify-archive/weekly-verify", {"destinations": ["sftp://u@127.0.0.1:1/x"],
                                                                         "repair": False})):
            dep_id = _api(prefect_server, "GET", f"/deployments/name/{deployment}")["id"]
            other = _api(prefect_server, "POST", f"/deployments/{dep_id}/create_flow_run", json={"parameters": parameters})["id"]
            ended = wait(other)
            assert ended["type"] == "FAILED", (deployment, ended)
            _assert_log_ends_with_its_message(prefect_server, other, ended["message"])

        # a small re-run of the good part: archived by the backfill run itself, no child run
        again = start(start=now - timedelta(days=4), end=now - timedelta(days=2, hours=1))
        assert wait(again)["type"] == "COMPLETED"
        assert [w["run"] for w in _artifact(prefect_server, again, "rtk-backfill")] == ["this run"]
    for r in good:
        assert (env.archive / r["output_file_name"]).stat().st_size == r["file_size"]
        assert env.state.downloads[(r["id"], "video")] == 1, r["id"]  # once, the re-run transferred nothing
    assert not (env.archive / bad["output_file_name"]).exists()


def _assert_log_ends_with_its_message(server, run_id: str, message: str) -> None:
    """The run's log (as the UI shows it) has no traceback, and its last ERROR is the failure."""
    from tests.fixtures import wait_until

    def logs():
        # the newest 200 lines (the API's page), oldest first: a poll of many recordings logs more
        found = _api(server, "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                           "sort": "TIMESTAMP_DESC", "limit": 200})[::-1]
        return found if any("Finished in state Failed" in r["message"] for r in found) else None

    found = wait_until(logs, 30, f"the log of run {run_id}")
    text = "\n".join(r["message"] for r in found)
    assert "Traceback" not in text and "Engine execution exited" not in text and "TypeError" not in text, text[-3000:]
    errors = [r["message"] for r in found if r["level"] >= 40]
    assert errors and message.split(";")[0][:60] in errors[-1], (message, errors[-3:])


def _find_deployment(server) -> str | None:
    import httpx

    r = httpx.get(f"{server.api_url}/deployments/name/backfill-recordings/backfill", timeout=30)
    window = httpx.get(f"{server.api_url}/deployments/name/archive-recordings/archive-window", timeout=30)
    return r.json()["id"] if r.status_code == 200 and window.status_code == 200 else None
