"""Simulated devices and the demo fleet: determinism, physical ranges, episodes, fleet files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import mean

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.fleet import EXAMPLE_FLEET, demo_fleet, load_fleet_file, simulators_for
from devices.publisher import next_stamp
from devices.simulators import (
    LOCAL_TZ,
    DustMonitor,
    Episode,
    LeakMeter,
    SimulatedDevice,
    WaterQualityProbe,
)
from monitor.core.catalogue import METRICS, DeviceKind, SiteKind

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=LOCAL_TZ)
MINUTE = timedelta(minutes=1)


def every(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    stamps = []
    while start < end:
        stamps.append(start)
        start += step
    return stamps


def one_of_each(*, seed: int = 7) -> list[SimulatedDevice]:
    return [
        DustMonitor("dust-001", seed=seed),
        WaterQualityProbe("water-001", seed=seed),
        WaterQualityProbe("water-003", seed=seed, river=True),
        LeakMeter("leak-001", seed=seed),
    ]


def values(device: SimulatedDevice, metric: str, stamps: list[datetime]) -> list[float]:
    return [device.sample(ts).values[metric] for ts in stamps]


def test_same_seed_and_time_give_the_same_reading_set() -> None:
    for a, b in zip(one_of_each(), one_of_each(), strict=True):
        assert a.sample(NOW) == b.sample(NOW)


def test_a_different_seed_gives_different_readings() -> None:
    for a, b in zip(one_of_each(seed=7), one_of_each(seed=8), strict=True):
        assert a.sample(NOW).values != b.sample(NOW).values


@pytest.mark.parametrize("device", one_of_each(), ids=lambda d: d.device_id)
def test_a_day_of_readings_stays_in_the_catalogue_ranges_and_kinds(
    device: SimulatedDevice,
) -> None:
    day = every(NOW.replace(hour=0), NOW.replace(hour=0) + timedelta(days=1), 5 * MINUTE)
    for ts in day:
        for name, value in device.sample(ts).values.items():
            metric = METRICS[name]
            assert device.kind in metric.kinds, name
            assert metric.in_range(value), (name, value, ts)


def test_the_totaliser_never_runs_backwards() -> None:
    meter = LeakMeter("leak-001", seed=7)
    totals = values(meter, "totaliser", every(NOW, NOW + timedelta(days=2), 7 * MINUTE))
    assert totals == sorted(totals)


def test_a_dust_episode_lifts_the_hourly_pm10_mean_above_250_and_only_inside_it() -> None:
    episode = Episode("dust", NOW - 80 * MINUTE, NOW + 30 * MINUTE, 4.0)
    monitor = DustMonitor("dust-001", seed=7, episodes=[episode])
    inside = values(monitor, "pm10", every(NOW - 60 * MINUTE, NOW, MINUTE))
    before = values(monitor, "pm10", every(NOW - 4 * 60 * MINUTE, NOW - 3 * 60 * MINUTE, MINUTE))
    after = values(monitor, "pm10", every(NOW + 30 * MINUTE, NOW + 90 * MINUTE, MINUTE))
    assert mean(inside) > 250
    assert mean(before) < 150
    assert mean(after) < 150


@pytest.mark.parametrize("hour", [3, 10, 19])
def test_a_pressure_drop_takes_pressure_below_the_network_minimum(hour: int) -> None:
    now = NOW.replace(hour=hour)
    episode = Episode("pressure_drop", now - 25 * MINUTE, now + 20 * MINUTE, 0.25)
    plain = LeakMeter("leak-001", seed=7)
    burst = LeakMeter("leak-001", seed=7, episodes=[episode])
    normal, dropped = plain.sample(now).values, burst.sample(now).values
    assert normal["pressure"] >= 0.25
    assert dropped["pressure"] < 0.14
    assert dropped["flow"] > 1.2 * normal["flow"]
    assert dropped["acoustic_level"] > normal["acoustic_level"] + 10


def test_a_turbidity_episode_takes_drinking_water_above_1_ntu() -> None:
    episode = Episode("turbidity", NOW - 30 * MINUTE, NOW + 15 * MINUTE, 6.0)
    probe = WaterQualityProbe("water-002", seed=7, episodes=[episode])
    plateau = every(NOW - 25 * MINUTE, NOW + 10 * MINUTE, MINUTE)
    assert min(values(probe, "turbidity", plateau)) > 1.0
    assert (
        max(values(probe, "turbidity", every(NOW - 3 * 60 * MINUTE, NOW - 60 * MINUTE, MINUTE)))
        < 0.5
    )


def test_the_demo_fleet_has_every_device_kind_on_existing_sites() -> None:
    fleet = demo_fleet(NOW)
    site_ids = {site["id"] for site in fleet.sites}
    assert {device["kind"] for device in fleet.devices} == {k.value for k in DeviceKind}
    assert all(device["site_id"] in site_ids for device in fleet.devices)
    assert [s.device_id for s in fleet.simulators] == [d["id"] for d in fleet.devices]
    river = [s for s in fleet.simulators if isinstance(s, WaterQualityProbe) and s.river]
    assert [s.device_id for s in river] == ["water-003"]
    assert {site["kind"] for site in fleet.sites} == {k.value for k in SiteKind}


def test_the_demo_dust_episode_shows_at_now() -> None:
    dust = demo_fleet(NOW).simulators[0]
    assert dust.device_id == "dust-001"
    assert dust.sample(NOW).values["pm10"] > 250


def test_the_example_fleet_file_loads(tmp_path: Path) -> None:
    document = load_fleet_file(EXAMPLE_FLEET)
    assert len(document["sites"]) == 7
    assert len(document["devices"]) == 9
    as_json = tmp_path / "fleet.json"
    as_json.write_text(json.dumps(document), encoding="utf-8")
    assert load_fleet_file(as_json) == document


def test_a_fleet_file_without_devices_is_rejected_naming_the_list(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[[sites]]\nid = "s1"\nname = "Site"\ndistrict = "Hedong"\nkind = "dma"\n'
        "latitude = 35.1\nlongitude = 118.4\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="devices"):
        load_fleet_file(path)


def test_a_fleet_file_with_an_unknown_kind_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    device = {"id": "d1", "site_id": "s1", "kind": "toaster", "name": "Toaster"}
    path.write_text(json.dumps({"sites": [], "devices": [device]}), encoding="utf-8")
    with pytest.raises(ValueError, match="toaster"):
        load_fleet_file(path)


def test_simulators_for_makes_river_probes_on_river_sections() -> None:
    devices = [{"id": "w1", "site_id": "r1", "kind": "water_quality", "name": "Probe"}]
    (probe,) = simulators_for(devices, seed=1, site_kinds={"r1": "river_section"})
    assert isinstance(probe, WaterQualityProbe)
    assert "do" in probe.sample(NOW).values


def test_rounds_run_back_to_back_still_get_distinct_event_times() -> None:
    """A publisher catching up on its schedule runs rounds within one millisecond; each must
    still have its own time, or the ingestor rightly stores the second as a duplicate."""
    now = datetime(2026, 11, 25, 8, 0, 0, 123000, tzinfo=UTC)
    first = next_stamp(None, now)
    second = next_stamp(first, now)
    third = next_stamp(second, now - timedelta(milliseconds=5))  # the clock stepped back
    assert first == now and second == now + timedelta(milliseconds=1)
    assert third == now + timedelta(milliseconds=2)
    whole = now.replace(microsecond=0)  # second-resolution stamps step by a second
    assert next_stamp(whole, whole) == whole + timedelta(seconds=1)
    later = now + timedelta(milliseconds=50)
    assert next_stamp(third, later) == later


@given(st.integers(0, 24 * 60 - 1), st.sampled_from([None, 1.0]))
def test_a_burst_is_one_the_burst_rule_sees_at_any_hour(
    minute: int, night_use: float | None
) -> None:
    """The demo's burst must pass the burst rule's bar (10% of the DMA's mean flow and 1 m³/h
    over the usual flow) whenever the demo starts: a burst of 30% of the flow at the time was
    a few m³/h at 02:00, and the demo showed no burst alert for the night hours."""
    now = NOW.replace(hour=0) + minute * MINUTE
    episode = Episode("pressure_drop", now - 25 * MINUTE, now + 20 * MINUTE, 0.25)
    plain = LeakMeter("leak-003", seed=7, night_use_m3h=night_use, leak_m3h=8.0)
    burst = LeakMeter("leak-003", seed=7, night_use_m3h=night_use, leak_m3h=8.0, episodes=[episode])
    day = [plain.sample(NOW.replace(hour=0) + h * 60 * MINUTE).values["flow"] for h in range(24)]
    excess = burst.sample(now).values["flow"] - plain.sample(now).values["flow"]
    assert excess >= max(1.0, 0.1 * mean(day))
