"""The pure DMA figures of issue 12 and the CJJ 92 rates, worked by hand."""

from __future__ import annotations

import math
from datetime import date, time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.leakage import (
    TRAILING_S,
    Cjj92Inputs,
    DmaParams,
    MeterDay,
    TotaliserPoint,
    TrailingMeans,
    area_rate,
    cjj92,
    day_figures,
    grade,
    minimum_night_flow,
    night_slots,
    r3_pressure,
    totaliser_volume,
    unwrap_totaliser,
)
from monitor.core.catalogue import DmaRole

DAY_S = 86400.0


def meter(
    device_id: str = "m1",
    *,
    role: DmaRole = DmaRole.inlet,
    flow: dict[int, float] | None = None,
    pressure: dict[int, float] | None = None,
    totaliser: list[TotaliserPoint] | None = None,
) -> MeterDay:
    return MeterDay(device_id, role, flow or {}, pressure or {}, tuple(totaliser or ()))


def worked_example_flow() -> dict[int, float]:
    """40 m³/h by day, 4.36 m³/h from 02:00 to 04:00: 960 m³ would need a day mean of 40."""
    flow = {s: 40.0 for s in range(96)}
    for s in range(8, 16):
        flow[s] = 4.36
    return flow


def test_worked_example_of_the_issue_gives_7_5_percent() -> None:
    params = DmaParams(connections=800)
    assert params.night_use_m3h == pytest.approx(1.36)
    tot = [
        TotaliserPoint(t, 1000.0 + 960 * t / DAY_S) for t in (-60.0, 60.0, DAY_S - 60, DAY_S + 60)
    ]
    day = day_figures([meter(flow=worked_example_flow(), totaliser=tot)], params)
    assert day.valid
    assert day.mnf_m3h == pytest.approx(4.36)
    assert day.net_night_flow_m3h == pytest.approx(3.0)
    assert day.ndf_h == 24
    assert day.leakage_m3 == pytest.approx(72.0)
    assert day.inlet_source == "totaliser"
    assert day.inlet_m3 == pytest.approx(960.0)
    assert day.leakage_pct == pytest.approx(7.5)
    assert day.coverage == 1.0


def test_without_totaliser_inlet_volume_is_defined_slots_times_a_quarter_hour() -> None:
    day = day_figures([meter(flow=worked_example_flow())], DmaParams(connections=800))
    assert day.inlet_source == "slots"
    assert day.inlet_m3 == pytest.approx((88 * 40 + 8 * 4.36) / 4)


def test_mnf_is_the_least_one_hour_mean_not_the_least_slot() -> None:
    net = {s: 10.0 for s in range(8, 16)}
    net[9] = 1.0  # one quiet slot among busy ones: the hour's mean holds it
    mnf = minimum_night_flow(net, night_slots(time(2), time(4)))
    assert mnf is not None
    assert mnf[0] == pytest.approx((1 + 30) / 4) and mnf[1] == 8


def test_mnf_runs_lie_wholly_inside_the_night_window() -> None:
    net = {s: 1.0 for s in range(96)}
    for s in range(8, 16):
        net[s] = 5.0
    assert minimum_night_flow(net, night_slots(time(2), time(4))) == (5.0, 8)


def test_outlet_meter_subtracts_and_a_missing_outlet_slot_leaves_the_slot_undefined() -> None:
    inlet = meter("in", flow={s: 10.0 for s in range(96)})
    out_flow = {s: 4.0 for s in range(96)}
    del out_flow[50]
    outlet = meter("out", role=DmaRole.outlet, flow=out_flow)
    day = day_figures([inlet, outlet], DmaParams(connections=0))
    assert day.mnf_m3h == pytest.approx(6.0)
    assert day.coverage == pytest.approx(95 / 96)
    assert day.inlet_m3 == pytest.approx(95 * 6.0 / 4)


def test_thin_night_is_invalid_with_null_figures_not_zero() -> None:
    flow = {s: 5.0 for s in range(96)}
    for s in range(8, 11):  # 3 of the 8 night slots missing: 62.5% covered
        del flow[s]
    day = day_figures([meter(flow=flow)], DmaParams(connections=100))
    assert not day.valid
    assert day.night_coverage == pytest.approx(5 / 8)
    assert day.mnf_m3h is None and day.leakage_m3 is None and day.leakage_pct is None
    assert day.inlet_m3 is None


def test_night_covered_75_percent_without_a_whole_hour_is_invalid() -> None:
    flow = {s: 5.0 for s in range(96)}
    for s in (11, 14):  # 6 of 8 defined, longest run 3
        del flow[s]
    assert not day_figures([meter(flow=flow)], DmaParams(connections=1)).valid


def test_ndf_follows_the_azp_pressure_ratio_and_an_hour_without_pressure_counts_one() -> None:
    pressure = {s: 0.4 for s in range(96)}  # day pressure
    for s in range(8, 16):
        pressure[s] = 0.5  # night pressure is higher: the MNF hour at 0.5
    for s in range(80, 84):
        del pressure[s]  # hour 20 without pressure
    azp = meter("p", role=DmaRole.azp, pressure=pressure)
    day = day_figures(
        [meter(flow=worked_example_flow()), azp], DmaParams(connections=800, leakage_exponent=1.0)
    )
    # hours 2 and 3 at ratio 1, hour 20 counts 1, 21 hours at 0.8
    assert day.ndf_h == pytest.approx(3 + 21 * 0.8)
    assert day.leakage_m3 == pytest.approx(3.0 * (3 + 21 * 0.8))


def test_ndf_uses_the_leakage_exponent() -> None:
    pressure = {s: 0.25 for s in range(96)}
    for s in range(8, 16):
        pressure[s] = 0.5
    azp = meter("p", role=DmaRole.azp, pressure=pressure)
    day = day_figures(
        [meter(flow=worked_example_flow()), azp], DmaParams(connections=800, leakage_exponent=1.5)
    )
    assert day.ndf_h == pytest.approx(2 + 22 * 0.5**1.5)


def test_totaliser_rollover_is_carried_and_a_reset_counts_from_zero() -> None:
    points = [
        TotaliserPoint(-300, 99_999_900.0),
        TotaliserPoint(300, 99_999_910.0),
        TotaliserPoint(43_200, 99_999_990.0),
        TotaliserPoint(43_500, 40.0),  # rolled over at 10⁸: 50 m³ in 5 minutes
        TotaliserPoint(60_000, 100.0),
        TotaliserPoint(60_300, 5.0),  # reset to 0
        TotaliserPoint(DAY_S - 300, 14.0),
        TotaliserPoint(DAY_S + 300, 15.0),
    ]
    series = unwrap_totaliser(points)
    assert series[3].value == pytest.approx(100_000_040.0)
    assert series[5].value == pytest.approx(100_000_105.0)
    # interpolated at both midnights: 99,999,905 and 100,000,114.5
    assert totaliser_volume(points, DAY_S) == pytest.approx(209.5)


def test_totaliser_gap_over_an_hour_across_midnight_is_not_interpolated() -> None:
    points = [TotaliserPoint(-1800, 0.0), TotaliserPoint(1801, 10.0), TotaliserPoint(DAY_S, 90.0)]
    assert totaliser_volume(points, DAY_S) is None


def test_totaliser_without_readings_bracketing_midnight_falls_back_to_slots() -> None:
    tot = [TotaliserPoint(600, 0.0), TotaliserPoint(DAY_S + 60, 900.0)]
    assert totaliser_volume(tot, DAY_S) is None
    day = day_figures([meter(flow=worked_example_flow(), totaliser=tot)], DmaParams(800))
    assert day.inlet_source == "slots"


@given(
    st.lists(st.floats(0, 500, allow_nan=False), min_size=96, max_size=96),
    st.sets(st.integers(0, 95), max_size=30),
)
def test_figures_are_null_exactly_when_invalid_and_leakage_is_never_negative(
    values: list[float], missing: set[int]
) -> None:
    flow = {s: v for s, v in enumerate(values) if s not in missing}
    day = day_figures([meter(flow=flow)], DmaParams(connections=300))
    night_defined = sum(1 for s in range(8, 16) if s in flow)
    assert day.night_coverage == night_defined / 8
    if night_defined < 6:
        assert not day.valid
    if day.valid:
        assert day.mnf_m3h is not None and day.leakage_m3 is not None
        assert day.leakage_m3 >= 0
        night_runs = [
            sum(flow[s] for s in range(i, i + 4)) / 4
            for i in range(8, 13)
            if all(s in flow for s in range(i, i + 4))
        ]
        assert day.mnf_m3h == pytest.approx(min(night_runs))
        assert day.mnf_m3h >= min(flow[s] for s in range(8, 16) if s in flow) - 1e-9
    else:
        assert (day.mnf_m3h, day.leakage_m3, day.leakage_pct, day.inlet_m3) == (None,) * 4


@given(st.floats(0, 1e6), st.floats(1, 1e4), st.floats(0, 1e6))
def test_totaliser_volume_of_a_steady_flow_survives_one_rollover(
    start: float, rate_m3h: float, extra: float
) -> None:
    modulus = 1e7
    pts = []
    value = modulus - (start % 1e5) - 1  # within 10% of the rollover
    for i in range(-1, 290):
        t = i * 300.0
        pts.append(TotaliserPoint(t, (value + rate_m3h * (t + 300) / 3600) % modulus))
    vol = totaliser_volume(pts, DAY_S)
    assert vol is not None
    assert math.isclose(vol, rate_m3h * 24, rel_tol=1e-6)


# --- CJJ 92, worked by hand (docs/leakage.md carries the same numbers) ---------------------
# Q_s = 1,000 × 10⁴ m³, Q_a = 880 × 10⁴ m³: R_WL = 12.00%.
# residential metered-to-household 400 × 10⁴ m³: r = 0.4, R1 = 0.08 × 0.4 = 3.20%.
# mains 75 km: A = 0.075 km/10⁴ m³, R2 = 0.99 × (0.075 − 0.0693) = 0.5643%.
# outlet pressure 0.40 MPa: R3 = 0.5%; frost depth 0.5 m: R4 = 0.
# R_BL = 12 − (3.20 + 0.5643 + 0.5 + 0) = 7.7357% -> grade 1.
HAND = Cjj92Inputs(
    supply_m3=1e7,
    registered_m3=8.8e6,
    residential_metered_m3=4e6,
    mains_km=75.0,
    outlet_pressure_mpa=0.40,
    frost_depth_m=0.5,
)


def test_cjj92_hand_example_to_a_hundredth_of_a_point() -> None:
    r = cjj92(HAND)
    assert r.r_wl is not None and r.r_bl is not None
    assert round(r.r_wl, 2) == 12.00
    assert round(r.r1 or 0, 2) == 3.20
    assert round(r.r2 or 0, 2) == 0.56
    assert r.r3 == 0.5 and r.r4 == 0
    assert abs(r.r_bl - 7.7357) < 0.005
    assert r.grade == 1


@pytest.mark.parametrize(
    ("mains_km", "unclamped", "clamped"),
    [(200.0, 12.9393, 3.0), (30.0, -3.8907, -3.0), (75.0, 0.5643, 0.5643)],
)
def test_cjj92_r2_is_clamped_to_three_points(
    mains_km: float, unclamped: float, clamped: float
) -> None:
    r = cjj92(Cjj92Inputs(supply_m3=1e7, registered_m3=8.8e6, mains_km=mains_km))
    assert r.r2_unclamped is not None and abs(r.r2_unclamped - unclamped) < 0.005
    assert r.r2 is not None and abs(r.r2 - clamped) < 0.005
    # with R1, R3, R4 absent (0): R_BL = 12 − R2
    assert r.r_bl is not None and abs(r.r_bl - (12 - clamped)) < 0.005


@pytest.mark.parametrize(
    ("mpa", "r3"),
    [(0.30, 0), (0.35, 0), (0.36, 0.5), (0.55, 0.5), (0.56, 1), (0.75, 1), (0.76, 2), (0.9, 2)],
)
def test_cjj92_r3_pressure_bands(mpa: float, r3: float) -> None:
    assert r3_pressure(mpa) == r3
    r = cjj92(
        Cjj92Inputs(supply_m3=1e7, registered_m3=8.8e6, mains_km=75.0, outlet_pressure_mpa=mpa)
    )
    assert r.r_bl is not None and abs(r.r_bl - (12 - 0.5643 - r3)) < 0.005


def test_cjj92_r4_counts_only_above_1_4_m_frost() -> None:
    assert cjj92(Cjj92Inputs(1e7, 8.8e6, mains_km=75.0, frost_depth_m=1.4)).r4 == 0
    assert cjj92(Cjj92Inputs(1e7, 8.8e6, mains_km=75.0, frost_depth_m=1.5)).r4 == 1


def test_cjj92_short_period_reports_r_wl_only() -> None:
    r = cjj92(Cjj92Inputs(1e6, 9.1e5, annual=False, mains_km=75.0, residential_metered_m3=4e5))
    assert r.r_wl is not None and round(r.r_wl, 2) == 9.00
    assert (r.r1, r.r2, r.r3, r.r4, r.r_bl, r.grade) == (None,) * 6


def test_cjj92_without_mains_length_has_no_r_bl() -> None:
    r = cjj92(Cjj92Inputs(1e7, 8.8e6))
    assert r.r_wl is not None and r.r_bl is None and r.grade is None


@pytest.mark.parametrize(
    ("r_bl", "g"), [(9.99, 1), (10.0, 1), (10.01, 2), (12.0, 2), (12.01, None)]
)
def test_cjj92_grades(r_bl: float, g: int | None) -> None:
    assert grade(r_bl) == g


def test_area_rate_is_weighted_by_supply() -> None:
    assert area_rate([(8.0, 3e6), (18.0, 1e6)]) == pytest.approx(10.5)
    assert area_rate([]) is None


def test_whole_area_row_sums_the_inputs_and_weights_the_rates_by_supply() -> None:
    from alerts.dma import Period, PeriodKind, area_period

    def row(site: str, supply: float, registered: float, mains: float | None) -> Period:
        r = cjj92(
            Cjj92Inputs(supply_m3=supply, registered_m3=registered, annual=True, mains_km=mains)
        )
        return Period(
            kind=PeriodKind.rolling_12m,
            site_id=site,
            period_start=date(2025, 1, 1),
            period_end=date(2025, 12, 31),
            days=365,
            annual=True,
            supply_m3=supply,
            supply_days=365,
            consumption_days=365,
            registered_m3=registered,
            residential_metered_m3=None,
            mains_km=mains,
            outlet_pressure_mpa=None,
            frost_depth_m=None,
            inputs_source="",
            r_wl=r.r_wl,
            r1=r.r1,
            r2=r.r2,
            r2_unclamped=r.r2_unclamped,
            r3=r.r3,
            r4=r.r4,
            r_bl=r.r_bl,
            grade=r.grade,
        )

    a, b = row("a", 3e6, 2.7e6, 20.0), row("b", 1e6, 0.8e6, 7.0)
    no_r_bl = row("c", 5e6, 1e6, None)  # no mains length: no R_BL, not in the area's row
    whole = area_period([a, b, no_r_bl])
    assert whole is not None and whole.site_id is None
    assert whole.supply_m3 == 4e6 and whole.registered_m3 == 3.5e6 and whole.mains_km == 27.0
    assert whole.r_wl == pytest.approx(100 * (4e6 - 3.5e6) / 4e6)
    assert a.r_bl is not None and b.r_bl is not None
    assert whole.r_bl == pytest.approx((a.r_bl * 3e6 + b.r_bl * 1e6) / 4e6)
    assert whole.r_bl is not None and whole.grade == grade(whole.r_bl)
    assert area_period([no_r_bl]) is None


_readings = st.lists(
    st.tuples(st.integers(0, 7200).map(float), st.floats(0, 100)),
    max_size=40,
    unique_by=lambda p: p[0],
)


@given(_readings, _readings, _readings, st.integers(-100, 7300).map(float))
def test_trailing_means_are_the_window_means_of_inlets_minus_outlets(
    inlet: list[tuple[float, float]],
    outlet: list[tuple[float, float]],
    azp: list[tuple[float, float]],
    t: float,
) -> None:
    """The burst rule's trailing 15-minute means, against the readings in (t - 15 min, t]
    counted by hand: net undefined when a flow meter has none, the AZP mean over those with one."""
    means = TrailingMeans(
        [
            (DmaRole.inlet, inlet),
            (DmaRole.outlet, outlet),
            (DmaRole.azp, azp),
            (DmaRole.acoustic, azp),
        ]
    )

    def window(points: list[tuple[float, float]]) -> list[float]:
        return [v for ts, v in points if t - TRAILING_S < ts <= t]

    i, o, p = window(inlet), window(outlet), window(azp)
    net = means.net(t)
    if i and o:
        assert net is not None
        assert net == pytest.approx(sum(i) / len(i) - sum(o) / len(o), abs=1e-9)
    else:
        assert net is None
    if p:
        assert means.azp(t) == pytest.approx(sum(p) / len(p), abs=1e-9)
    else:
        assert means.azp(t) is None
    since = t - 1000
    assert means.reading_times(since) == sorted({ts for ts, _ in inlet + outlet if ts >= since})
