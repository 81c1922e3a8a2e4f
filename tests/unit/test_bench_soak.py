"""The soak stage's verdict: growth is measured from the end of warm-up, per process, and the
database's growth per reading stored."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bench.soak import summarise


def _sample(readings: int, db: int, ingestor: int, api: int) -> dict[str, Any]:
    return {
        "t_s": 0.0,
        "readings": readings,
        "db_bytes": db,
        "dead_letters": 0,
        "rss": {"ingestor": ingestor, "api": api},
    }


def test_flat_memory_after_warm_up_is_flat_and_bytes_per_reading_is_the_slope() -> None:
    samples = [
        _sample(0, 1000, 50, 100),  # warm-up: growth here is not counted
        _sample(100, 21000, 100, 100),
        _sample(200, 41000, 100, 100),
        _sample(300, 61000, 101, 100),
        _sample(400, 81000, 102, 101),
    ]
    s = summarise(samples)
    assert s["flat"] is True
    assert s["bytes_per_reading_after_warmup"] == 200.0


def test_a_leak_is_not_flat() -> None:
    samples = [_sample(i * 100, 1000 + i, 100 + 20 * i, 100) for i in range(6)]
    assert summarise(samples)["flat"] is False


@given(st.lists(st.integers(1, 10**9), min_size=0, max_size=8))
def test_any_samples_give_a_verdict_or_none_never_an_exception(rss: list[int]) -> None:
    s = summarise([_sample(i, i, r, r) for i, r in enumerate(rss)])
    assert s["flat"] in (True, False, None)


def _timed(t_s: float, ingestor: int) -> dict[str, Any]:
    return _sample(int(t_s), 1000 + int(t_s), ingestor, 100) | {"t_s": t_s}


def test_growth_counts_only_once_the_longest_window_is_full() -> None:
    # the windows fill for 600 s (memory grows), then the process is flat
    samples = [_timed(t, 50 + min(t, 600) // 10) for t in range(0, 1300, 100)]
    assert summarise(samples)["flat"] is False  # from the first third (400 s): still filling
    s = summarise(samples, warm_up_s=600)
    assert s["flat"] is True and s["growth_from_s"] == 600 and s["windows_full"] is True


def test_a_soak_shorter_than_the_longest_window_gives_no_verdict() -> None:
    samples = [_timed(t, 50 + t) for t in range(0, 1300, 100)]
    s = summarise(samples, warm_up_s=14_400)
    assert s["flat"] is None and s["windows_full"] is False


@given(
    st.lists(st.integers(1, 10**9), min_size=0, max_size=8),
    st.floats(0, 10_000, allow_nan=False),
)
def test_any_warm_up_gives_a_verdict_or_none(rss: list[int], warm_up_s: float) -> None:
    s = summarise([_timed(100.0 * i, r) for i, r in enumerate(rss)], warm_up_s)
    assert s["flat"] in (True, False, None)
    if s["flat"] is not None:
        assert s["growth_from_s"] >= warm_up_s
