"""How `alerts.dma.recompute_days_split` cuts (site, day) pairs into its parts."""

from __future__ import annotations

from datetime import date, timedelta
from itertools import pairwise

from alerts.dma import _cut


def pairs(sites: int, days: int) -> list[tuple[str, date]]:
    return [
        (f"s{i:03d}", date(2026, 11, 1) + timedelta(days=d))
        for i in range(sites)
        for d in range(days)
    ]


def test_the_parts_cut_at_site_boundaries_into_about_equal_runs_in_order() -> None:
    p = pairs(1000, 30)
    parts = _cut(p, 2)
    assert [len(g) for g in parts] == [15000, 15000]
    assert [pair for g in parts for pair in g] == p  # every pair once, in order
    for a, b in pairwise(parts):
        assert a[-1][0] < b[0][0]  # no site in two parts: no two parts wait on one lock


def test_fewer_sites_than_parts_give_fewer_parts_and_nothing_gives_none() -> None:
    assert [len(g) for g in _cut(pairs(1, 3), 2)] == [3]
    assert [len(g) for g in _cut(pairs(5, 3), 3)] == [6, 6, 3]
    assert _cut([], 2) == []
    assert [len(g) for g in _cut(pairs(4, 2), 1)] == [8]
