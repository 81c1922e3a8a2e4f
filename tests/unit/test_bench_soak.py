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
