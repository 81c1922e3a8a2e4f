"""Turn one MQTT message into rows to store and dead letters to keep.

Validation is per part: a bad reading set in a batch, or a bad value in a reading set,
becomes its own dead letter and the good parts beside it are still stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

from ingest.contract import STATUS, TELEMETRY, ReadingSet, parse_topic, same_unit
from monitor.core.catalogue import SERIES, DeviceKind, QualityFlag

PAYLOAD_EXCERPT = 4096
# No field sensor of ours reports from before this; earlier stamps are unit mistakes
# (epoch seconds read as milliseconds land in January 1970).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


class Reason(StrEnum):
    """Why a message, or part of one, was not stored. Stable codes: the API filters on them."""

    bad_topic = "bad_topic"
    unknown_device = "unknown_device"
    retired_device = "retired_device"
    payload_too_large = "payload_too_large"
    bad_json = "bad_json"
    bad_payload = "bad_payload"
    batch_too_long = "batch_too_long"
    bad_timestamp = "bad_timestamp"
    future_timestamp = "future_timestamp"
    unknown_metric = "unknown_metric"
    wrong_metric_for_kind = "wrong_metric_for_kind"
    bad_value = "bad_value"
    out_of_range = "out_of_range"
    unit_mismatch = "unit_mismatch"
    duplicate_key = "duplicate_key"
    bad_status = "bad_status"
    store_failed = "store_failed"
    # HJ 212 gateway (ingest/hj212): what a frame or one of its readings failed on
    hj212_bad_crc = "hj212_bad_crc"
    hj212_bad_length = "hj212_bad_length"
    hj212_oversize = "hj212_oversize"
    hj212_garbage = "hj212_garbage"
    hj212_bad_cp = "hj212_bad_cp"
    hj212_unknown_mn = "hj212_unknown_mn"
    hj212_wrong_password = "hj212_wrong_password"
    hj212_unknown_code = "hj212_unknown_code"


class Row(NamedTuple):
    device_id: str
    metric: str
    ts: datetime
    value: float
    quality: str
    received_at: datetime


@dataclass(slots=True)
class DeadLetterRecord:
    topic: str
    device_id: str | None
    reason: Reason
    detail: str
    payload: str


@dataclass(slots=True)
class Parsed:
    rows: list[Row] = field(default_factory=list)
    dead: list[DeadLetterRecord] = field(default_factory=list)
    device_id: str | None = None
    status: str | None = None  # "online"/"offline" from the status topic (last will)


# In valid JSON a string followed by a colon is always an object key, so counting these
# matches counts the keys in the text; orjson keeps only the last of duplicate keys.
_KEY = re.compile(rb'"(?:[^"\\]|\\.)*"\s*:')


# A payload with no backslash and no whitespace has every key's closing quote right before its
# colon, and no other `":` than those and strings that start with a colon (counted too, never
# missed). So when the count of `":` equals the keys of the parsed document, no key was
# repeated: the exact (slower) scan is needed only for payloads that fail this test.
_UNPLAIN = re.compile(rb"[\\\s]")


def _no_repeated_key(payload: bytes, keys: int) -> bool:
    return _UNPLAIN.search(payload) is None and payload.count(b'":') == keys


def _count_keys(doc: Any) -> int:
    if isinstance(doc, dict):
        return len(doc) + sum(_count_keys(v) for v in doc.values())
    if isinstance(doc, list):
        return sum(_count_keys(v) for v in doc)
    return 0


class DeviceInfo(NamedTuple):
    kind: DeviceKind
    active: bool


class Limits(NamedTuple):
    prefix: str
    max_payload_bytes: int
    max_batch_items: int
    future_tolerance: timedelta


def _excerpt(payload: bytes | str) -> str:
    if isinstance(payload, bytes):
        payload = payload[:PAYLOAD_EXCERPT].decode("utf-8", errors="replace")
    return payload[:PAYLOAD_EXCERPT]


def _part(obj: Any) -> str:
    try:
        return _excerpt(orjson.dumps(obj))
    except TypeError:
        return _excerpt(repr(obj))


def parse_message(
    topic: str,
    payload: bytes,
    *,
    lookup: Any,
    limits: Limits,
    received_at: datetime,
    fast: bool = True,
) -> Parsed:
    """Validate a telemetry message. `lookup(device_id) -> DeviceInfo | None` is the registry.

    `fast`: the common shape is checked by hand first (`_fast_rows`); anything else, and
    anything wrong, goes through the pydantic contract. False: pydantic for everything."""
    out = Parsed()

    def dead(reason: Reason, detail: str, part: str) -> Parsed:
        out.dead.append(DeadLetterRecord(topic, out.device_id, reason, detail, part))
        return out

    where = parse_topic(limits.prefix, topic)
    if where is None or where[1] not in (TELEMETRY, STATUS):
        return dead(
            Reason.bad_topic,
            f"topic is not {limits.prefix}/v1/devices/{{device_id}}/telemetry (or /status)",
            _excerpt(payload),
        )
    device_id = where[0]
    out.device_id = device_id
    device: DeviceInfo | None = lookup(device_id)
    if device is None:
        return dead(
            Reason.unknown_device,
            f"device {device_id!r} is not registered; register it (API or "
            "`envmon devices import`) and have it publish again",
            _excerpt(payload),
        )
    if not device.active:
        return dead(Reason.retired_device, f"device {device_id!r} is retired", _excerpt(payload))
    if len(payload) > limits.max_payload_bytes:
        return dead(
            Reason.payload_too_large,
            f"payload is {len(payload)} bytes; the limit is {limits.max_payload_bytes}",
            _excerpt(payload),
        )
    if where[1] == STATUS:
        return _status(payload, out, dead)
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return dead(Reason.bad_json, f"payload is not JSON: {exc}", _excerpt(payload))
    keys = _count_keys(doc)
    if not (fast and _no_repeated_key(payload, keys)) and len(_KEY.findall(payload)) != keys:
        return dead(
            Reason.duplicate_key,
            "payload repeats a key inside one object; which value is meant is ambiguous",
            _excerpt(payload),
        )

    is_batch = isinstance(doc, dict) and "batch" in doc
    if is_batch:
        items = doc["batch"]
        if set(doc) != {"batch"} or not isinstance(items, list) or not items:
            return dead(
                Reason.bad_payload,
                'a batch message is {"batch": [reading sets]} with a non-empty list '
                "and no other keys",
                _excerpt(payload),
            )
        if len(items) > limits.max_batch_items:
            return dead(
                Reason.batch_too_long,
                f"batch has {len(items)} reading sets; the limit is {limits.max_batch_items}",
                _excerpt(payload),
            )
    else:
        items = [doc]

    latest = received_at + limits.future_tolerance
    for index, item in enumerate(items):
        label = f"batch[{index}]" if is_batch else "message"
        rows = _fast_rows(item, device_id, device.kind, received_at, latest) if fast else None
        if rows is not None:
            out.rows.extend(rows)
            continue
        _reading_set(item, label, device_id, device.kind, received_at, latest, out, topic)
    return out


def _reading_set(
    item: Any,
    label: str,
    device_id: str,
    kind: DeviceKind,
    received_at: datetime,
    latest: datetime,
    out: Parsed,
    topic: str,
) -> None:
    def dead(reason: Reason, detail: str, part: Any) -> None:
        out.dead.append(
            DeadLetterRecord(topic, device_id, reason, f"{label}: {detail}", _part(part))
        )

    if not isinstance(item, dict):
        dead(Reason.bad_payload, "a reading set is a JSON object with ts and values", item)
        return
    rs: ReadingSet | None
    try:
        rs = ReadingSet.model_validate(item)
    except ValidationError as exc:
        rs = _salvage(item, exc, dead)
    if rs is None:
        return
    if rs.ts < EARLIEST:
        dead(
            Reason.bad_timestamp,
            f"ts {rs.ts.isoformat()} is before 2000: epoch seconds sent as milliseconds?",
            item,
        )
        return
    if rs.ts > latest:
        dead(
            Reason.future_timestamp,
            f"ts {rs.ts.isoformat()} is ahead of the server clock by more than the tolerance",
            item,
        )
        return
    for metric, value in rs.values.items():
        spec = SERIES.get(metric)
        if spec is None:
            dead(
                Reason.unknown_metric,
                f"unknown metric {metric!r}",
                {"ts": item.get("ts"), "values": {metric: value}},
            )
            continue
        if kind not in spec.kinds:
            dead(
                Reason.wrong_metric_for_kind,
                f"metric {metric!r} is not measured by a {kind}",
                {"ts": item.get("ts"), "values": {metric: value}},
            )
            continue
        if not spec.in_range(value):
            dead(
                Reason.out_of_range,
                f"{metric}={value} {spec.unit} is outside the physical range "
                f"[{spec.low:g}, {spec.high:g}] (wrong unit or faulty sensor?)",
                {"ts": item.get("ts"), "values": {metric: value}},
            )
            continue
        unit = rs.units.get(metric)
        if unit is not None and not same_unit(unit, spec.unit):
            dead(
                Reason.unit_mismatch,
                f"{metric} is sent in {unit!r}; envmon takes it in {spec.unit!r} only",
                {"ts": item.get("ts"), "values": {metric: value}, "units": {metric: unit}},
            )
            continue
        flag = rs.flags.get(metric)
        out.rows.append(
            Row(device_id, metric, rs.ts, value, flag.value if flag else "N", received_at)
        )


_FLAGS = frozenset(f.value for f in QualityFlag)
_NO_FLAGS: dict[str, str] = {}
_EXACT = 2**53  # ints up to this are floats without rounding
# ISO 8601 as devices write it (what `encode` writes: `2026-11-25T08:00:00.123456Z`); any other
# spelling pydantic may accept is left to pydantic
_ISO = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})", re.ASCII
)


def _fast_ts(raw: Any) -> datetime | None:
    kind = type(raw)
    if kind is str:
        if _ISO.fullmatch(raw) is None:
            return None
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            return None
    if kind is int or kind is float:  # not bool: its type is bool
        try:
            return datetime.fromtimestamp(raw / 1000, UTC)  # as the contract's _epoch_ms
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _fast_rows(
    item: Any, device_id: str, kind: DeviceKind, received_at: datetime, latest: datetime
) -> list[Row] | None:
    """The rows of a reading set of the common shape (ts, values of known metrics in range,
    optional flags), checked without pydantic; None when anything is unusual or wrong, and
    the contract's path then judges the set and words its dead letters. Property-tested
    against that path (tests/unit/test_validate_fast.py)."""
    if type(item) is not dict:
        return None
    flags = item.get("flags", _NO_FLAGS)
    values = item.get("values")
    if (
        len(item) != (3 if "flags" in item else 2)
        or type(values) is not dict
        or not values
        or type(flags) is not dict
    ):
        return None
    ts = _fast_ts(item.get("ts"))
    if ts is None or ts < EARLIEST or ts > latest:
        return None
    for flag in flags.values():
        if type(flag) is not str or flag not in _FLAGS:
            return None
    rows: list[Row] = []
    for metric, value in values.items():
        # StrictFloat takes ints as floats; orjson never yields NaN or Infinity, but a dict
        # built in Python might (x - x is NaN for both)
        if type(value) is int and -_EXACT <= value <= _EXACT:
            value = float(value)
        elif type(value) is not float or value - value != 0.0:
            return None
        spec = SERIES.get(metric)
        if spec is None or kind not in spec.kinds or not spec.low <= value <= spec.high:
            return None
        rows.append(Row(device_id, metric, ts, value, flags.get(metric, "N"), received_at))
    return rows


def _salvage(item: dict[str, Any], exc: ValidationError, dead: Any) -> ReadingSet | None:
    """Drop the values that failed validation (each a dead letter) and keep the rest."""
    bad_values: dict[str, str] = {}
    fatal: list[str] = []
    for err in exc.errors():
        loc = err["loc"]
        if len(loc) == 2 and loc[0] == "values" and isinstance(loc[1], str):
            bad_values[loc[1]] = err["msg"]
        else:
            fatal.append(f"{'.'.join(str(p) for p in loc) or 'message'}: {err['msg']}")
    if fatal:
        ts_only = all(f.startswith("ts:") for f in fatal)
        dead(Reason.bad_timestamp if ts_only else Reason.bad_payload, "; ".join(fatal), item)
        return None
    values = dict(item["values"])
    for metric, msg in bad_values.items():
        dead(
            Reason.bad_value,
            f"{metric}: {msg} (numbers only, no strings, NaN or Infinity)",
            {"ts": item.get("ts"), "values": {metric: values.pop(metric)}},
        )
    if not values:
        return None
    return ReadingSet.model_validate({**item, "values": values})


def _status(payload: bytes, out: Parsed, dead: Any) -> Parsed:
    """`online` / `offline`, plain or as {"status": ...}: a device's birth and last will."""
    text = payload.strip().decode("utf-8", errors="replace")
    value: Any = text
    if text.startswith("{"):
        try:
            value = orjson.loads(payload).get("status")
        except (orjson.JSONDecodeError, AttributeError):
            value = None
    if value not in ("online", "offline"):
        return dead(  # type: ignore[no-any-return]
            Reason.bad_status,
            'a status message is "online" or "offline" (or {"status": ...})',
            _excerpt(payload),
        )
    out.status = value
    return out
