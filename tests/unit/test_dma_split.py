"""How `alerts.dma.recompute_days_split` cuts (site, day) pairs into its parts."""

from __future__ import annotations

from datetime import date, timedelta
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

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


@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 40)), max_size=200),
    st.integers(1, 6),
)
def test_any_pairs_in_any_parts_each_once_in_order_no_site_split(
    raw: list[tuple[int, int]], parts: int
) -> None:
    """For any sorted (site, day) pairs and any number of parts: at most `parts` non-empty
    runs that together are the pairs, in order, and no site in two of them."""
    p = sorted({(f"s{s:03d}", date(2026, 11, 1) + timedelta(days=d)) for s, d in raw})
    got = _cut(p, parts)
    assert len(got) <= parts and all(got)
    assert [pair for g in got for pair in g] == p
    for a, b in pairwise(got):
        assert a[-1][0] < b[0][0]
