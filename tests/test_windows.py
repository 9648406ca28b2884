from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from flows.windows import split_range

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def test_split_covers_the_range_without_gaps_or_overlap():
    windows = split_range(T0, T0 + timedelta(days=3, hours=5), timedelta(days=1))
    assert len(windows) == 4
    assert windows[0].since == T0 and windows[-1].until == T0 + timedelta(days=3, hours=5)
    for a, b in zip(windows, windows[1:]):
        assert a.until == b.since
    assert windows[-1].until - windows[-1].since == timedelta(hours=5)


@pytest.mark.parametrize("start, end, size", [(T0, T0, timedelta(days=1)), (T0, T0 - timedelta(1), timedelta(days=1)), (T0, T0 + timedelta(1), timedelta(0))])
def test_split_rejects_bad_input(start, end, size):
    with pytest.raises(ValueError):
        split_range(start, end, size)
