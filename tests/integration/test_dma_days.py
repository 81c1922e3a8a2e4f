"""DMA daily figures from stored readings: synthetic DMAs with known leaks, on both databases."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, Engine, select

from alerts import dma
from alerts.dma import changes, recompute_days
from ingest.repository import insert_readings
from ingest.validate import Row
from monitor.core.db import make_engine
from monitor.core.models import DmaDay
from monitor.registry import DeviceCreate, SiteCreate, upsert_device, upsert_site

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)
STEP = timedelta(minutes=5)
CONNECTIONS = 800  # × 1.7 L/h = 1.36 m³/h legitimate night use


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    eng = make_engine(url)
    yield eng
    eng.dispose()


def demand(local: datetime) -> float:
    """Customer demand beyond the night use (m³/h): none from 01:00 to 05:00, a day curve else."""
    h = local.hour + local.minute / 60
    if 1 <= h < 5:
        return 0.0
    return 30.0 + 20.0 * math.sin(math.pi * (h - 5) / 20) ** 2


def flows(leak: float, through: float = 0.0) -> Iterator[tuple[datetime, float, float]]:
    """(UTC time, inlet flow, outlet flow) every 5 minutes from 1 h before to 1 h after the day."""
    start = datetime.combine(DAY, time(0), tzinfo=TZ) - timedelta(hours=1)
    for i in range(26 * 12 + 1):
        t = start + i * STEP
        own = 1.36 + leak + demand(t)
        yield t.astimezone(UTC), own + through, through


def setup_dma(engine: Engine, site: str, roles: dict[str, str | None]) -> None:
    with engine.begin() as conn:
        upsert_site(
            conn,
            SiteCreate(id=site, name=site, district="Lanshan", kind="dma", connections=CONNECTIONS),
        )
        for dev, role in roles.items():
            upsert_device(
                conn,
                DeviceCreate(
                    id=dev, site_id=site, kind="leak_meter", interval_s=300, dma_role=role
                ),
            )


def store(
    engine: Engine,
    device: str,
    series: list[tuple[datetime, float]],
    *,
    reset_at: datetime | None = None,
    rollover_from: float | None = None,
    skip: tuple[datetime, datetime] | None = None,
) -> float:
    """Store flow and totaliser readings; returns the true volume of the local day."""
    rows: list[Row] = []
    total = rollover_from or 1000.0
    day_start = datetime.combine(DAY, time(0), tzinfo=TZ)
    day_end = day_start + timedelta(days=1)
    volume = 0.0
    for t, q in series:
        if skip and skip[0] <= t < skip[1]:
            total += q * STEP.total_seconds() / 3600
            continue
        if reset_at is not None and t == reset_at:
            total = 0.0
        rows.append(Row(device, "flow", t, q, "N", t))
        rows.append(Row(device, "totaliser", t, total % 1e7, "N", t))
        # the volume in the 5 minutes after t, at t's flow (the totaliser's own rectangle rule)
        if day_start <= t < day_end:
            volume += q * STEP.total_seconds() / 3600
        total += q * STEP.total_seconds() / 3600
    with engine.begin() as conn:
        insert_readings(conn, rows)
    return volume


def read(engine: Engine, site: str) -> dict[str, object]:
    with engine.begin() as conn:
        assert recompute_days(conn, [(site, DAY)], tz=TZ) == 1
    with engine.connect() as conn:
        r = conn.execute(
            select(DmaDay.__table__).where(DmaDay.site_id == site, DmaDay.day == DAY)
        ).one()
    return dict(r._mapping)


def close(value: object, truth: float, rel: float = 0.02) -> bool:
    return isinstance(value, float) and abs(value - truth) <= rel * abs(truth)


def test_known_leak_gives_mnf_net_night_flow_and_leakage_within_2_percent(engine: Engine) -> None:
    setup_dma(engine, "dma-a", {"in-a": None})
    series = [(t, q) for t, q, _ in flows(leak=3.0)]
    volume = store(engine, "in-a", series)
    d = read(engine, "dma-a")
    assert d["valid"] is True and d["coverage"] == 1.0
    assert close(d["mnf_m3h"], 4.36)
    assert close(d["net_night_flow_m3h"], 3.0)
    assert d["ndf_h"] == 24.0
    assert close(d["leakage_m3"], 72.0)
    assert d["inlet_source"] == "totaliser"
    assert close(d["inlet_m3"], volume, 0.005)
    assert close(d["leakage_pct"], 100 * 72.0 / volume)


def test_meter_reset_rollover_and_a_20_minute_gap_keep_the_figures(engine: Engine) -> None:
    setup_dma(engine, "dma-r", {"in-r": "inlet"})
    series = [(t, q) for t, q, _ in flows(leak=5.0)]
    local = datetime.combine(DAY, time(0), tzinfo=TZ)
    volume = store(
        engine,
        "in-r",
        series,
        rollover_from=1e7 - 200,  # wraps at 10⁷ within the first hours
        reset_at=(local + timedelta(hours=14)).astimezone(UTC),
        skip=(
            (local + timedelta(hours=2, minutes=15)).astimezone(UTC),
            (local + timedelta(hours=2, minutes=35)).astimezone(UTC),
        ),
    )
    d = read(engine, "dma-r")
    assert d["valid"] is True
    assert d["night_coverage"] == 7 / 8
    assert close(d["mnf_m3h"], 6.36)
    assert close(d["net_night_flow_m3h"], 5.0)
    assert close(d["leakage_m3"], 120.0)
    assert d["inlet_source"] == "totaliser"
    assert close(d["inlet_m3"], volume)


def test_thin_night_is_invalid_with_null_figures_not_zero(engine: Engine) -> None:
    setup_dma(engine, "dma-t", {"in-t": None})
    local = datetime.combine(DAY, time(0), tzinfo=TZ)
    series = [(t, q) for t, q, _ in flows(leak=3.0)]
    store(
        engine,
        "in-t",
        series,
        skip=(
            (local + timedelta(hours=2, minutes=45)).astimezone(UTC),
            (local + timedelta(hours=4)).astimezone(UTC),
        ),
    )
    d = read(engine, "dma-t")
    assert d["valid"] is False
    assert d["night_coverage"] == 3 / 8
    for key in ("mnf_m3h", "net_night_flow_m3h", "ndf_h", "leakage_m3", "leakage_pct", "inlet_m3"):
        assert d[key] is None, key


def test_outlet_meter_subtracts_the_water_passed_on(engine: Engine) -> None:
    setup_dma(engine, "dma-o", {"in-o": None, "out-o": "outlet"})
    rows = list(flows(leak=2.0, through=25.0))
    v_in = store(engine, "in-o", [(t, q) for t, q, _ in rows])
    v_out = store(engine, "out-o", [(t, q) for t, _, q in rows])
    d = read(engine, "dma-o")
    assert close(d["mnf_m3h"], 3.36)
    assert close(d["net_night_flow_m3h"], 2.0)
    assert close(d["leakage_m3"], 48.0)
    assert close(d["inlet_m3"], v_in - v_out)


def test_a_day_without_data_is_stored_invalid_and_a_non_dma_site_is_ignored(
    engine: Engine,
) -> None:
    setup_dma(engine, "dma-e", {"in-e": None})
    with engine.begin() as conn:
        upsert_site(
            conn, SiteCreate(id="cs-1", name="c", district="Lanshan", kind="construction_site")
        )
        assert recompute_days(conn, [("dma-e", DAY), ("cs-1", DAY)], tz=TZ) == 1
        row = conn.execute(select(DmaDay.__table__)).one()
    assert row.valid is False and row.coverage == 0.0 and row.leakage_m3 is None


def test_azp_pressure_scales_the_night_flow_into_the_day(engine: Engine) -> None:
    setup_dma(engine, "dma-p", {"in-p": None, "azp-p": "azp"})
    series = [(t, q) for t, q, _ in flows(leak=3.0)]
    store(engine, "in-p", series)
    rows = []
    for t, _ in series:
        h = t.astimezone(TZ).hour
        rows.append(Row("azp-p", "pressure", t, 0.45 if 1 <= h < 5 else 0.35, "N", t))
    with engine.begin() as conn:
        insert_readings(conn, rows)
    d = read(engine, "dma-p")
    ndf = 4 + 20 * 0.35 / 0.45  # four night hours at the MNF pressure, twenty at 0.35 MPa
    assert close(d["ndf_h"], ndf)
    assert close(d["leakage_m3"], 3.0 * ndf)


def test_a_stored_batch_names_the_dma_days_to_recompute(engine: Engine) -> None:
    setup_dma(engine, "dma-b", {"in-b": None})
    local = datetime.combine(DAY, time(0), tzinfo=TZ)
    with engine.begin() as conn:
        upsert_site(
            conn, SiteCreate(id="cs-b", name="c", district="Lanshan", kind="construction_site")
        )
        upsert_device(conn, DeviceCreate(id="dust-b", site_id="cs-b", kind="dust_monitor"))
        changed = changes(
            conn,
            [
                ("in-b", (local + timedelta(hours=12)).astimezone(UTC)),
                (
                    "in-b",
                    (local + timedelta(minutes=10)).astimezone(UTC),
                ),  # brackets the day before
                ("dust-b", (local + timedelta(hours=12)).astimezone(UTC)),
                ("unknown", local.astimezone(UTC)),
            ],
            tz=TZ,
        )
    assert changed.days == {("dma-b", DAY), ("dma-b", DAY - timedelta(days=1))}
    # the DMA's earliest reading, where the burst rule judges from; no other site named
    assert changed.since == {"dma-b": (local + timedelta(minutes=10)).astimezone(UTC)}
    assert changed.earliest_days() == {"dma-b": DAY - timedelta(days=1)}


def test_two_writers_recomputing_one_dma_day_at_once_both_succeed(pg_url: str) -> None:
    """Two ingestors storing readings of one DMA's meters (a round-robin $share splits them)
    recompute its day in two transactions at the same time: the second waits for the first
    (a lock per site) instead of colliding with the slots the first has just written."""
    engine = make_engine(pg_url)
    try:
        setup_dma(engine, "dma-c", {"c-in": "inlet"})
        store(engine, "c-in", [(t, q) for t, q, _ in flows(3.0)])
        errors: list[BaseException] = []
        ready = threading.Barrier(2)

        def recompute() -> None:
            try:
                with engine.begin() as conn:
                    ready.wait(10)
                    recompute_days(conn, [("dma-c", DAY)], tz=TZ)
            except BaseException as exc:  # re-raised below, in the test's thread
                errors.append(exc)

        for _ in range(5):
            threads = [threading.Thread(target=recompute) for _ in range(2)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(60)
            assert not errors, errors
        assert read(engine, "dma-c")["valid"]
    finally:
        engine.dispose()


def _days(engine: Engine) -> dict[tuple[str, date], dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(select(DmaDay.__table__)).all()
    return {
        (r.site_id, r.day): {k: v for k, v in r._mapping.items() if k != "computed_at"}
        for r in rows
    }


def test_a_split_recompute_whose_part_fails_keeps_the_other_part_and_a_rerun_mends_all(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`recompute_days_split`: each part commits alone. One part failing (here after its
    work, before its commit) leaves the other part's days written and right and its own as
    they were (stale here: computed before the last readings came); the error is raised; a
    rerun makes every day right, the same rows as one transaction gives."""
    engine = make_engine(pg_url)
    try:
        setup_dma(engine, "dma-s1", {"s1-in": None})
        setup_dma(engine, "dma-s2", {"s2-in": None})
        store(engine, "s1-in", [(t, q) for t, q, _ in flows(leak=2.0)])
        local = datetime.combine(DAY, time(0), tzinfo=TZ)
        night = (local + timedelta(hours=1), local + timedelta(hours=5))
        half = [(t, q) for t, q, _ in flows(leak=4.0) if not night[0] <= t < night[1]]
        store(engine, "s2-in", half)  # no night yet: its day is invalid
        pairs = [("dma-s1", DAY), ("dma-s2", DAY)]
        with engine.begin() as conn:
            recompute_days(conn, pairs, tz=TZ)
        assert _days(engine)[("dma-s2", DAY)]["valid"] is False
        with engine.begin() as conn:  # the night arrives late (the rest is stored again)
            insert_readings(
                conn, [Row("s2-in", "flow", t, q, "N", t) for t, q, _ in flows(leak=4.0)]
            )

        real = dma.recompute_days

        def failing(conn: Connection, pairs: list[tuple[str, date]], **kw: object) -> int:
            n = real(conn, pairs, **kw)  # type: ignore[arg-type]
            if any(s == "dma-s2" for s, _ in pairs):
                raise RuntimeError("the part of dma-s2 fails before its commit")
            return n

        monkeypatch.setattr(dma, "recompute_days", failing)
        with pytest.raises(RuntimeError, match="dma-s2"):
            dma.recompute_days_split(engine, pairs, parts=2, tz=TZ)
        after_failure = _days(engine)
        assert after_failure[("dma-s2", DAY)]["valid"] is False  # as it was: rolled back
        s1 = after_failure[("dma-s1", DAY)]
        assert s1["valid"] is True and close(s1["mnf_m3h"], 3.36)  # the other part committed

        monkeypatch.setattr(dma, "recompute_days", real)
        assert dma.recompute_days_split(engine, pairs, parts=2, tz=TZ) == 2
        split = _days(engine)
        assert split[("dma-s2", DAY)]["valid"] is True
        assert close(split[("dma-s2", DAY)]["mnf_m3h"], 5.36)
        with engine.begin() as conn:
            recompute_days(conn, pairs, tz=TZ)
        assert _days(engine) == split  # the same rows as one transaction writes
    finally:
        engine.dispose()
