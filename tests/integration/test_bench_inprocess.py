"""`python -m bench.inprocess` (the write path alone, for profiling) keeps working: it runs
every batch of a small fleet through one writer and reports them."""

from __future__ import annotations

import pytest

from bench import inprocess
from tests.conftest import PG_ADMIN


def test_the_in_process_writer_bench_stores_every_batch(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        inprocess.main(
            ["--devices", "40", "--rounds", "3", "--batch", "25", "--pg-admin", PG_ADMIN]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "5 batches of 25 messages" in out.out
    assert "batch 5/5" in out.err
