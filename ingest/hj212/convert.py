"""A parsed HJ 212 packet -> the MQTT contract's reading set, plus dead letters.

The gateway stores nothing itself: it turns each data frame into the same `ReadingSet` JSON a
device would publish on MQTT and hands it to the one write path, which validates it (range,
kind, future time) exactly as it validates MQTT. What only HJ 212 can judge (unknown codes,
unreadable DataTime) becomes dead letters here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

import orjson

from ingest.hj212.codes import PARTICULATE_CODES, PERIODS, REALTIME_CN, metric_for, series_for
from ingest.hj212.protocol import Packet, split_key
from ingest.validate import DeadLetterRecord, Reason
from monitor.core.catalogue import QualityFlag, rtd_metric

DATA_CNS = frozenset({REALTIME_CN, *PERIODS})
# CP keys that are not readings (§1.5): never reported as unknown codes
_NOT_READINGS = {"DataTime", "Flag", "PolId", "BeginTime", "EndTime", "SystemTime"}
# suffixes carried beside a value that are not values of their own (§1.5)
_ATTRIBUTES = {"Flag", "EFlag", "SampleTime", "Ori"}
_FLAGS = {f.value for f in QualityFlag}


RULES_FROM_RTD = "rtd"
# `hj212_rules_from` -> the CN whose -Avg values become the device's plain metric, and the
# period's length (None: the device's registered interval_s, its minute-data interval)
RULES_FROM_PERIOD: dict[str, tuple[str, int | None]] = {
    "minute": ("2051", None),
    "hour": ("2061", 3600),
}


class Device(NamedTuple):
    device_id: str
    unit: str | None  # "ng/m3" when particulates arrive in the standard's unit
    interval_s: int = 60  # its registered reporting interval
    rtd_interval_s: int | None = None  # the RtdInterval it last reported (1061)
    rules_from: str = RULES_FROM_RTD  # which of its series the rules see (hj212_rules_from)


@dataclass(slots=True)
class Facts:
    """What a logger said about itself, for its device row (written by the writer, in the
    batch of the frame that said it, so it is durable when that frame is answered)."""

    device_id: str
    deviations: list[str] = field(default_factory=list)
    rtd_interval_s: int | None = None
    equipment: dict[str, dict[str, float]] | None = None
    equipment_at: datetime | None = None


def dumps(obj: object) -> bytes:
    """`orjson.dumps`, copied to its length. orjson returns its bytes in the 4 KiB buffer
    it wrote them to; a burst of 10,000 logins has 10,000 payloads queued for the writer at
    once, 40 MB where 1 MB is used, and the allocator keeps that high-water mark."""
    return bytes(memoryview(orjson.dumps(obj)))


def encode_facts(facts: Facts) -> bytes:
    return dumps(
        {
            "device_id": facts.device_id,
            "deviations": facts.deviations,
            "rtd_interval_s": facts.rtd_interval_s,
            "equipment": facts.equipment,
            "equipment_at": facts.equipment_at.isoformat() if facts.equipment_at else None,
        }
    )


def decode_facts(payload: bytes) -> Facts:
    d = orjson.loads(payload)
    at = d.get("equipment_at")
    return Facts(
        d["device_id"],
        list(d.get("deviations") or []),
        d.get("rtd_interval_s"),
        d.get("equipment"),
        datetime.fromisoformat(at) if at else None,
    )


# §1.5: RtdInterval (s) is 30-3600 in the standard; loggers in the field are set wider, so
# anything from 1 s to a day (the registration's own bounds) is recorded as reported
RTD_INTERVAL_RANGE = (1, 86_400)


def rtd_interval(packet: Packet) -> int | str:
    """The RtdInterval of a logger's 1061 upload, or why it cannot be read."""
    text = packet.cp.get("RtdInterval")
    if text is None:
        return "no RtdInterval in the 1061 upload"
    lo, hi = RTD_INTERVAL_RANGE
    if not (text.isascii() and text.isdigit()) or not lo <= int(text) <= hi:
        return f"RtdInterval={text[:20]!r} is not a number of seconds from {lo} to {hi}"
    return int(text)


# §1.5: SBxxx-RS is the state (0 off, 1 running, 2 calibrating, 3 maintenance, 4 alarm,
# 5 blowback), SBxxx-RT the hours it ran that day
EQUIPMENT_STATES = range(6)
EQUIPMENT_SUFFIXES = ("RS", "RT")


def equipment(packet: Packet, tz: ZoneInfo) -> tuple[dict[str, dict[str, float]], datetime] | str:
    """The equipment status of a 2021 upload, per equipment code, at its DataTime; or why
    it cannot be read."""
    ts = data_time(packet.cp.get("DataTime"), tz)
    if ts is None:
        return f"DataTime={packet.cp.get('DataTime')!r} is not YYYYMMDDhhmmss"
    out: dict[str, dict[str, float]] = {}
    for key, text in packet.cp.items():
        parts = split_key(key)
        if parts is None or parts[1] not in EQUIPMENT_SUFFIXES:
            continue
        code, suffix = parts
        value = _num(text)
        if value is None or (suffix == "RS" and value not in EQUIPMENT_STATES):
            return f"{key}={text[:20]!r} is not a valid {suffix}"
        if suffix == "RT" and not 0 <= value <= 24:
            return f"{key}={text[:20]!r} is not 0-24 hours"
        out.setdefault(code[:32], {})[suffix] = int(value) if suffix == "RS" else value
    if not out:
        return "no -RS or -RT item in the 2021 upload"
    return out, ts


@dataclass(slots=True)
class Converted:
    reading_set: dict[str, object] | None = None
    # for a device whose rules see this period's data: its -Avg values as the plain
    # metrics, stamped at the period's end
    for_rules: dict[str, object] | None = None
    dead: list[DeadLetterRecord] = field(default_factory=list)
    deviations: list[str] = field(default_factory=list)


def _num(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def data_time(text: str | None, tz: ZoneInfo) -> datetime | None:
    """`DataTime=YYYYMMDDhhmmss` is local time in the city's zone (no offset on the wire)."""
    if text is None or len(text) != 14 or not text.isdigit():
        return None
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=tz)
    except ValueError:
        return None


def convert(packet: Packet, device: Device, topic: str, raw: str, tz: ZoneInfo) -> Converted:
    """The reading set of a 2011/2051/2061/2031 packet and a dead letter per unusable value."""
    out = Converted()
    cn = packet.cn or ""

    def dead(reason: Reason, detail: str) -> None:
        out.dead.append(DeadLetterRecord(topic, device.device_id, reason, detail, raw))

    ts = data_time(packet.cp.get("DataTime"), tz)
    if ts is None:
        dead(Reason.hj212_bad_cp, f"DataTime={packet.cp.get('DataTime')!r} is not YYYYMMDDhhmmss")
        return out
    values: dict[str, float] = {}
    flags: dict[str, str] = {}
    by_code: dict[str, str] = {}  # metric -> the code it came from, for the flag lookup
    # the rules see this period's means (hj212_rules_from): -Avg also as the plain metric
    period = RULES_FROM_PERIOD.get(device.rules_from)
    rules_cn = period[0] if period else None
    plain: dict[str, float] = {}
    plain_of: dict[str, str] = {}  # plain metric -> the -Avg series it repeats (its flag)
    for key, text in packet.cp.items():
        if key in _NOT_READINGS:
            continue
        parts = split_key(key)
        if parts is None:
            dead(Reason.hj212_unknown_code, f"CP key {key!r} has no -suffix")
            continue
        code, suffix = parts
        if suffix in _ATTRIBUTES:
            continue
        if code.endswith("-Rtd"):
            # §1.5: one broken device sends `LA-Rtd-Rtd=71.0` (and `LA-Rtd-Flag`)
            code = code[: -len("-Rtd")]
            out.deviations.append("doubled_suffix")
        metric = metric_for(code)
        series = series_for(metric, cn, suffix) if metric else None
        if series is not None and metric is not None and cn == REALTIME_CN and rules_cn:
            # its rules see period data: real-time values are their own series, so the two
            # never meet under one (device, metric, instant)
            series = rtd_metric(metric)
        if series is None:
            what = f"factor code {code!r}" if metric is None else f"suffix -{suffix} in CN={cn}"
            dead(Reason.hj212_unknown_code, f"{what} is not mapped ({key}={text[:40]})")
            continue
        value = _num(text)
        if value is None:
            dead(Reason.hj212_bad_cp, f"{key}={text[:40]!r} is not a number")
            continue
        if device.unit == "ng/m3" and code in PARTICULATE_CODES:
            value /= 1000.0  # the standard's table unit (ng/m³) -> the catalogue's µg/m³
        values[series] = value
        by_code[series] = code
        if cn == rules_cn and suffix == "Avg" and metric is not None:
            plain[metric] = value
            plain_of[metric] = series
    for series, code in by_code.items():
        flag = packet.cp.get(f"{code}-Flag") or packet.cp.get(f"{code}-Rtd-Flag")
        if flag in _FLAGS:
            flags[series] = flag
        elif flag is not None:
            dead(Reason.hj212_bad_cp, f"{code}-Flag={flag[:10]!r} is not an HJ 212 data flag")
    if values:
        out.reading_set = _reading_set(ts, values, flags)
    if plain and period:
        # DataTime is the period's start: the mean is dated at its end, never before the
        # data it is the mean of (the rules' windows and no-data then see it as it arrives)
        length = period[1] or device.interval_s
        plain_flags = {m: flags[s] for m, s in plain_of.items() if s in flags}
        out.for_rules = _reading_set(ts + timedelta(seconds=length), plain, plain_flags)
    return out


def _reading_set(
    ts: datetime, values: dict[str, float], flags: dict[str, str]
) -> dict[str, object]:
    rs: dict[str, object] = {"ts": ts.isoformat(), "values": values}
    if flags:
        rs["flags"] = flags
    return rs


def encode_dead(records: list[DeadLetterRecord]) -> bytes:
    return dumps(
        [
            {
                "topic": d.topic,
                "device_id": d.device_id,
                "reason": d.reason.value,
                "detail": d.detail,
                "payload": d.payload,
            }
            for d in records
        ]
    )


def decode_dead(payload: bytes) -> list[DeadLetterRecord]:
    return [
        DeadLetterRecord(d["topic"], d["device_id"], Reason(d["reason"]), d["detail"], d["payload"])
        for d in orjson.loads(payload)
    ]
