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
