"""The simulated fleet of the benchmark: devices of the three kinds, registered in one COPY,
and the payloads they publish (the contract's JSON, values from `devices.simulators`)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import psycopg

from devices.simulators import DustMonitor, LeakMeter, SimulatedDevice, WaterQualityProbe
from ingest.contract import ReadingSet, TelemetryBatch, encode, telemetry_topic
from monitor.core.catalogue import DeviceKind, SiteKind

# Share of each kind of device in the default fleet: construction-dust monitors, drinking-water
# probes (plant outlets, network points), river probes and DMA leak meters.
DEFAULT_MIX = {"dust": 4, "water": 2, "river": 1, "leak": 3}
KINDS = {
    "dust": (DeviceKind.dust_monitor, SiteKind.construction_site),
    "water": (DeviceKind.water_quality, SiteKind.network_point),
    "river": (DeviceKind.water_quality, SiteKind.river_section),
    "leak": (DeviceKind.leak_meter, SiteKind.dma),
}
DEVICES_PER_SITE = 4
PREFIX = "envmon"
# One metric per message whose commit the live stage watches: each kind sends exactly one.
TRACKED_METRICS = ("pm10", "turbidity", "pressure")
PROBE_PREFIX = "probe-leak-"


def parse_mix(text: str) -> dict[str, int]:
    """`dust=4,water=2,river=1,leak=3` -> weights; ValueError on an unknown kind."""
    mix: dict[str, int] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in KINDS:
            raise ValueError(f"unknown device kind {name!r} (use {', '.join(KINDS)})")
        mix[name] = int(weight or 1)
    if not any(mix.values()):
        raise ValueError("the mix has no devices")
    return mix


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    site_id: str
    mix_kind: str
    sim: SimulatedDevice

    @property
    def topic(self) -> str:
        return telemetry_topic(PREFIX, self.id)


def build_fleet(count: int, mix: dict[str, int], *, seed: int = 11) -> list[Device]:
    """`count` devices in the proportions of `mix`, interleaved as a real fleet's ids are."""
    total = sum(mix.values())
    quotas = {k: count * w // total for k, w in mix.items()}
    for k in itertools.islice(itertools.cycle(mix), count - sum(quotas.values())):
        quotas[k] += 1
    devices: list[Device] = []
    for kind, n in quotas.items():
        for i in range(n):
            device_id = f"{kind}-{i:06d}"
            site_id = f"site-{kind}-{i // DEVICES_PER_SITE:05d}"
            devices.append(Device(device_id, site_id, kind, _simulator(kind, device_id, seed)))
    # round-robin over kinds, so any slice of the fleet has the mix
    by_kind = [[d for d in devices if d.mix_kind == k] for k in quotas]
    return [d for group in itertools.zip_longest(*by_kind) for d in group if d is not None]


def _simulator(kind: str, device_id: str, seed: int) -> SimulatedDevice:
    if kind == "dust":
        return DustMonitor(device_id, seed=seed)
    if kind == "leak":
        return LeakMeter(device_id, seed=seed)
    return WaterQualityProbe(device_id, seed=seed, river=kind == "river")


def probe_devices(count: int, *, seed: int = 11) -> list[Device]:
    """Leak meters outside the fleet, one per alert-latency probe (each opens a new alert)."""
    return [
        Device(f"{PROBE_PREFIX}{i:05d}", "site-probe", "leak", LeakMeter(f"probe{i}", seed=seed))
        for i in range(count)
    ]


def register(dsn: str, devices: Sequence[Device]) -> None:
    """Insert sites and devices with COPY (the registry API upserts one by one)."""
    now = datetime.now(UTC)
    sites: dict[str, str] = {}
    for d in devices:
        sites.setdefault(d.site_id, KINDS[d.mix_kind][1].value)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY sites (id, name, district, kind, latitude, longitude, created_at) FROM STDIN"
        ) as copy:
            for site_id, kind in sites.items():
                copy.write_row((site_id, f"bench {site_id}", "Bench", kind, 35.06, 118.35, now))
        with cur.copy(
            "COPY devices (id, site_id, kind, name, status, created_at) FROM STDIN"
        ) as copy:
            for d in devices:
                kind = KINDS[d.mix_kind][0].value
                copy.write_row((d.id, d.site_id, kind, f"bench {d.id}", "active", now))


def readings_in(payload_sets: Sequence[ReadingSet]) -> int:
    return sum(len(s.values) for s in payload_sets)


@dataclass(slots=True)
class Backlog:
    """Messages to publish, in order: (topic, payload) and the readings they carry."""

    messages: list[tuple[str, bytes]]
    readings: int
    reading_sets: int

    def head(self, n: int) -> Backlog:
        """The first n messages (what a consumer that stops after n must have stored)."""
        part = self.messages[:n]
        readings = sum(_count_values(p) for _, p in part)
        sets = sum(_count_sets(p) for _, p in part)
        return Backlog(part, readings, sets)

    def each_round_shuffled(self, devices: int, *, seed: int = 7) -> Backlog:
        """The same messages with each round's (`devices` messages, one per device) order
        shuffled, as a live fleet's arrivals interleave: a device's own messages stay in
        order. (Published round by round in one fixed order, a round-robin split over an
        ingestor count that divides the fleet would send each device to one ingestor.)"""
        rng = random.Random(seed)
        out: list[tuple[str, bytes]] = []
        for i in range(0, len(self.messages), devices):
            chunk = self.messages[i : i + devices]
            rng.shuffle(chunk)
            out += chunk
        return Backlog(out, self.readings, self.reading_sets)


def _count_values(payload: bytes) -> int:
    doc = orjson.loads(payload)
    items = doc.get("batch", [doc])
    return sum(len(i["values"]) for i in items)


def _count_sets(payload: bytes) -> int:
    doc = orjson.loads(payload)
    return len(doc["batch"]) if "batch" in doc else 1


def make_backlog(
    devices: Sequence[Device],
    *,
    messages: int,
    sets_per_message: int,
    interval_s: float,
    end: datetime,
) -> Backlog:
    """About `messages` messages of recent history, round by round as a live fleet sends them:
    every device's next message, then the next round. Event times are `interval_s` apart and
    end before `end`; with sets_per_message > 1 a message is a {"batch": [...]} of that many
    consecutive reading sets (a device uploading what it buffered)."""
    per_device = max(1, round(messages / len(devices)))
    rounds = per_device * sets_per_message
    start = end - timedelta(seconds=interval_s * rounds)
    out: list[tuple[str, bytes]] = []
    readings = 0
    sets = 0
    for m in range(per_device):
        for d in devices:
            batch = [
                d.sim.sample(start + timedelta(seconds=interval_s * (m * sets_per_message + k)))
                for k in range(sets_per_message)
            ]
            payload = encode(batch[0] if sets_per_message == 1 else TelemetryBatch(batch=batch))
            out.append((d.topic, payload))
            readings += readings_in(batch)
            sets += len(batch)
    return Backlog(out, readings, sets)


def value_pool(devices: Sequence[Device], *, per_device: int, at: datetime) -> list[object]:
    """Per device [topic, [values, ...]]: what the paced publisher stamps with the current
    time and sends, cycling through the values (JSON-ready, for a worker process)."""
    pool: list[object] = []
    for d in devices:
        values = [d.sim.sample(at - timedelta(minutes=7 * k)).values for k in range(per_device)]
        pool.append([d.topic, values])
    return pool


def iso_ms(epoch_s: float) -> str:
    """An event time as the contract's ISO 8601 with offset, to the millisecond."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def live_payload(epoch_ms: int, values: dict[str, float]) -> bytes:
    """A live reading set stamped `epoch_ms` (the same JSON `encode(ReadingSet)` writes)."""
    return orjson.dumps({"ts": iso_ms(epoch_ms / 1000), "values": values})


def violating_payload(epoch_ms: int) -> bytes:
    """A leak-meter reading set with negative pressure: rule `net-pressure-negative` fires."""
    return live_payload(
        epoch_ms,
        {"flow": 91.0, "pressure": -0.05, "acoustic_level": 41.0, "totaliser": 1_250_000.0},
    )
