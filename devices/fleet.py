"""Fleets: the fleet file (sites and devices to register), and simulators built from it."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from devices.simulators import DustMonitor, Episode, LeakMeter, SimulatedDevice, WaterQualityProbe
from monitor.core.catalogue import DeviceKind, SiteKind

EXAMPLE_FLEET = Path(__file__).with_name("example-fleet.toml")

SITE_KEYS = ("id", "name", "district", "kind", "latitude", "longitude")
DEVICE_KEYS = ("id", "site_id", "kind", "name")
# a leak meter's `simulator` table: the DMA's legitimate night use its customers draw, a
# background leak, and the totaliser register's rollover (devices/simulators.py LeakMeter)
LEAK_SIMULATOR_KEYS = ("night_use_m3h", "leak_m3h", "rollover_m3")


@dataclass
class Fleet:
    sites: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    simulators: list[SimulatedDevice]


def load_fleet_file(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Read a .toml or .json fleet file: {"sites": [...], "devices": [...]}; ValueError if bad."""
    try:
        if path.suffix == ".toml":
            with path.open("rb") as f:
                document: Any = tomllib.load(f)
        elif path.suffix == ".json":
            document = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise ValueError(f"{path}: a fleet file must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a document with 'sites' and 'devices' lists")
    for key in ("sites", "devices"):
        if not isinstance(document.get(key), list):
            raise ValueError(f"{path}: missing the {key!r} list")
    return {
        "sites": _records(path, document, "sites", SITE_KEYS, {k.value for k in SiteKind}),
        "devices": _records(path, document, "devices", DEVICE_KEYS, {k.value for k in DeviceKind}),
    }


def _records(
    path: Path, document: dict[str, Any], key: str, fields: tuple[str, ...], kinds: set[str]
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = document[key]
    for i, record in enumerate(records):
        where = f"{path}: {key}[{i}]"
        if not isinstance(record, dict):
            raise ValueError(f"{where} is not a table/object")
        missing = [f for f in fields if f not in record]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}")
        if record["kind"] not in kinds:
            raise ValueError(f"{where}: kind {record['kind']!r} is not one of {sorted(kinds)}")
    return records


def simulators_for(
    devices: list[dict[str, Any]],
    *,
    seed: int,
    site_kinds: dict[str, str],
    episodes: Mapping[str, Sequence[Episode]] | None = None,
) -> list[SimulatedDevice]:
    """One simulator per device record; water-quality probes on a river section are river probes."""
    simulators: list[SimulatedDevice] = []
    for record in devices:
        device_id = str(record["id"])
        own = (episodes or {}).get(device_id, ())
        kind = DeviceKind(record["kind"])
        if kind is DeviceKind.dust_monitor:
            simulators.append(DustMonitor(device_id, seed=seed, episodes=own))
        elif kind is DeviceKind.water_quality:
            river = site_kinds.get(str(record["site_id"])) == SiteKind.river_section
            simulators.append(WaterQualityProbe(device_id, seed=seed, episodes=own, river=river))
        else:
            sim = record.get("simulator") or {}
            unknown = set(sim) - set(LEAK_SIMULATOR_KEYS)
            if unknown:
                raise ValueError(f"device {device_id}: unknown simulator keys {sorted(unknown)}")
            simulators.append(LeakMeter(device_id, seed=seed, episodes=own, **sim))
    return simulators


def demo_fleet(now: datetime, *, seed: int = 7) -> Fleet:
    """The example fleet, with a dust, a turbidity and a burst (pressure drop) episode around
    `now`."""
    if now.tzinfo is None:
        raise ValueError("demo_fleet needs a timezone-aware `now`")
    document = load_fleet_file(EXAMPLE_FLEET)
    minutes = timedelta(minutes=1)
    episodes = {
        "dust-001": [Episode("dust", now - 80 * minutes, now + 30 * minutes, 4.0)],
        "water-002": [Episode("turbidity", now - 30 * minutes, now + 15 * minutes, 6.0)],
        # a burst in DMA 02: the pressure falls and the inflow rises by 30% of its mean or more
        "leak-003": [Episode("pressure_drop", now - 40 * minutes, now + 60 * minutes, 0.25)],
    }
    site_kinds = {str(site["id"]): str(site["kind"]) for site in document["sites"]}
    simulators = simulators_for(
        document["devices"], seed=seed, site_kinds=site_kinds, episodes=episodes
    )
    return Fleet(document["sites"], document["devices"], simulators)
