"""The simulator's DMA leak meter: night use, background leakage and a rolling totaliser that the
leakage method recovers (docs/leakage.md)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import datetime, time, timedelta

import pytest

from alerts.leakage import DmaParams, MeterDay, TotaliserPoint, day_figures
from devices.simulators import LOCAL_TZ, LeakMeter
from monitor.core.catalogue import DmaRole

DAY = datetime.combine(datetime(2026, 11, 20), time(0), tzinfo=LOCAL_TZ)


def simulated_day(meter: LeakMeter) -> MeterDay:
    slots: dict[int, list[float]] = defaultdict(list)
    tot = []
    for i in range(-12, 24 * 12 + 12):
        t = DAY + timedelta(minutes=5 * i)
        values = meter.sample(t).values
        if 0 <= i < 288:
            slots[i // 3].append(values["flow"])
        tot.append(TotaliserPoint(300.0 * i, values["totaliser"]))
    flow = {s: sum(v) / len(v) for s, v in slots.items()}
    return MeterDay(meter.device_id, DmaRole.inlet, flow, {}, tuple(tot))


@pytest.mark.parametrize("leak", [3.0, 12.0])
def test_background_leakage_is_recovered_within_2_percent(leak: float) -> None:
    meter = LeakMeter("lm-1", seed=5, night_use_m3h=1.36, leak_m3h=leak, rollover_m3=1e6)
    day = day_figures([simulated_day(meter)], DmaParams(connections=800))
    assert day.valid and day.net_night_flow_m3h is not None and day.leakage_m3 is not None
    assert day.mnf_m3h is not None
    assert day.net_night_flow_m3h == pytest.approx(leak, rel=0.02)
    assert day.leakage_m3 == pytest.approx(leak * 24, rel=0.02)
    assert day.inlet_source == "totaliser"


def test_totaliser_rolls_over_and_the_volume_carries_the_leak() -> None:
    plain = LeakMeter("lm-2", seed=1, night_use_m3h=1.36, rollover_m3=1e4)
    leaky = LeakMeter("lm-2", seed=1, night_use_m3h=1.36, leak_m3h=5.0, rollover_m3=1e4)
    values = [plain.sample(DAY + timedelta(hours=h)).values["totaliser"] for h in range(24 * 7)]
    assert any(b < a for a, b in itertools.pairwise(values))  # it wrapped
    assert all(v < 1e4 for v in values)
    p = day_figures([simulated_day(plain)], DmaParams(connections=800))
    q = day_figures([simulated_day(leaky)], DmaParams(connections=800))
    assert p.inlet_m3 is not None and q.inlet_m3 is not None
    assert q.inlet_m3 - p.inlet_m3 == pytest.approx(5.0 * 24, rel=1e-3)


def test_default_leak_meter_is_unchanged_by_the_dma_options() -> None:
    t = DAY + timedelta(hours=9, minutes=5)
    assert LeakMeter("lm-3", seed=2).sample(t) == LeakMeter("lm-3", seed=2, leak_m3h=0.0).sample(t)


def test_totaliser_agrees_with_the_integrated_flow() -> None:
    meter = LeakMeter("lm-4", seed=3, night_use_m3h=2.0, leak_m3h=4.0, rollover_m3=1e5)
    md = simulated_day(meter)
    by_totaliser = day_figures([md], DmaParams(connections=800)).inlet_m3
    no_totaliser = MeterDay(md.device_id, md.role, md.flow, {}, ())
    by_slots = day_figures([no_totaliser], DmaParams(connections=800)).inlet_m3
    assert by_totaliser is not None and by_slots is not None
    assert by_totaliser == pytest.approx(by_slots, rel=0.01)
