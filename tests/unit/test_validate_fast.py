"""The hand-written fast path of validation agrees with the pydantic contract on any payload:
the same rows (values, event times and offsets, flags) and the same dead letters, word for word
(`parse_message(fast=False)` is the contract's path alone)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ingest.contract import ReadingSet, telemetry_topic
from ingest.validate import DeviceInfo, Limits, Parsed, parse_message
from monitor.core.catalogue import SERIES, DeviceKind, QualityFlag

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
LIMITS = Limits("envmon", 4096, 10, timedelta(minutes=5))
KINDS = list(DeviceKind)


class Obj:
    """A JSON object as written on the wire: pairs in order, keys possibly repeated."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


def dump(doc: Any, space: str) -> bytes:
    if isinstance(doc, Obj):
        inner = b",".join(
            json.dumps(k, ensure_ascii=False).encode()
            + space.encode()
            + b":"
            + space.encode()
            + dump(v, space)
            for k, v in doc.pairs
        )
        return b"{" + inner + b"}"
    if isinstance(doc, list):
        return b"[" + b",".join(dump(v, space) for v in doc) + b"]"
    return json.dumps(doc, ensure_ascii=False).encode()  # big ints too


def _iso(at: datetime, fraction: int, offset: int | None, zulu: bool) -> str:
    at = at.replace(microsecond=0)
    if offset is not None:
        at = at.astimezone(timezone(timedelta(minutes=offset)))
    text = at.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + str(at.microsecond + fraction).zfill(6)[: 1 + fraction % 6]
    if offset is None:
        return text  # naive: pydantic refuses it
    if zulu and offset == 0:
        return text + "Z"
    return text + at.strftime("%z")[:3] + ":" + at.strftime("%z")[3:]


instants = st.one_of(
    st.datetimes(
        min_value=datetime(1999, 12, 31), max_value=datetime(2026, 11, 25), timezones=st.just(UTC)
    ),
    # around the received time and its future tolerance (5 minutes)
    st.datetimes(
        min_value=datetime(2026, 11, 25, 7, 50),
        max_value=datetime(2026, 11, 25, 8, 10),
        timezones=st.just(UTC),
    ),
)
# epoch milliseconds from just before 2000 to 10 minutes past the received time
epoch_ms = st.one_of(
    st.integers(946_684_700_000, 1_795_594_200_000),
    st.integers(1_795_593_000_000, 1_795_594_200_000),
)
iso_ts = st.builds(
    _iso,
    instants,
    st.integers(0, 999_999),
    st.one_of(st.none(), st.integers(-14 * 60, 14 * 60), st.sampled_from([0, 480, -300, 345])),
    st.booleans(),
)
timestamps = st.one_of(
    iso_ts,
    iso_ts.map(lambda s: s.replace("T", " ")),
    iso_ts.map(lambda s: s + "0"),
    st.integers(-(10**20), 10**20),
    epoch_ms,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["2026-11-25T07:59:00+08:00", "2026-02-30T00:00:00Z", "2026-11-25T24:00:00Z"]),
    st.sampled_from(
        ["2026-11-25T07:00:00+24:00", "2026-11-25T07:00:00+23:59", "٢٠٢٦-11-25T07:00:00Z"]
    ),
    st.booleans(),
    st.none(),
)
metric_names = st.one_of(
    st.sampled_from(sorted(SERIES)), st.sampled_from(["PM10", "pm10 ", "bogus", ""]), st.text()
)
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-10, 30_000),
    st.integers(-(2**64), 2**64),
    st.integers(0, 500),
)
values = st.one_of(numbers, numbers, numbers, st.text(max_size=5), st.booleans(), st.none())
flag_values = st.one_of(
    st.sampled_from([f.value for f in QualityFlag]), st.sampled_from(["n", "X", ""]), st.integers()
)


def pairs(keys: st.SearchStrategy[str], vals: st.SearchStrategy[Any], **kw: Any) -> Any:
    return st.lists(st.tuples(keys, vals), **kw).map(Obj)


def _plausible_values(kind: DeviceKind) -> Any:
    """Values devices of this kind send: known metrics, mostly in range."""
    own = sorted(name for name, spec in SERIES.items() if kind in spec.kinds)

    def value(name: str) -> Any:
        spec = SERIES[name]
        return st.one_of(
            st.floats(spec.low, spec.high),
            st.floats(spec.low, spec.high),
            st.integers(int(spec.low), int(min(spec.high, 2**60))),
            st.sampled_from([spec.low, spec.high, spec.low - 0.001, spec.high * 1.01 + 1]),
        )

    return st.lists(
        st.sampled_from(own).flatmap(lambda n: st.tuples(st.just(n), value(n))),
        min_size=1,
        max_size=8,
        unique_by=lambda pair: pair[0],
    ).map(Obj)


def reading_sets(kind: DeviceKind) -> Any:
    plausible_ts = st.one_of(iso_ts, epoch_ms, st.floats(9.4e11, 1.8e12))
    good_flags = pairs(
        st.sampled_from(sorted(SERIES)), st.sampled_from(list(QualityFlag)), max_size=4
    )
    return st.builds(
        lambda ts, vals, flags, extra, leave_out: Obj(
            [
                p
                for i, p in enumerate([("ts", ts), ("values", vals), *flags, *extra])
                if i not in leave_out
            ]
        ),
        st.one_of(plausible_ts, plausible_ts, plausible_ts, timestamps),
        st.one_of(
            _plausible_values(kind),
            _plausible_values(kind),
            pairs(metric_names, values, max_size=8),
            values,
        ),
        st.one_of(
            st.just([]),
            good_flags.map(lambda o: [("flags", o)]),
            pairs(metric_names, flag_values, max_size=4).map(lambda o: [("flags", o)]),
        ),
        st.one_of(
            st.just([]),
            st.just([]),
            st.lists(
                st.tuples(
                    st.sampled_from(["units", "ts", "values", "x", "flags"]),
                    st.one_of(values, pairs(metric_names, st.text(max_size=6), max_size=2)),
                ),
                max_size=2,
            ),
        ),
        st.one_of(st.just(set()), st.just(set()), st.sets(st.integers(0, 2), max_size=1)),
    )


def common_sets(kind: DeviceKind) -> Any:
    """What devices send, mostly valid: an aware ISO time or epoch ms, known metrics, flags."""
    aware_ts = st.builds(
        _iso,
        instants,
        st.integers(0, 999_999),
        st.one_of(st.integers(-14 * 60, 14 * 60), st.sampled_from([0, 480])),
        st.booleans(),
    )
    ts = st.one_of(aware_ts, aware_ts, epoch_ms, epoch_ms.map(float))
    flags = pairs(st.sampled_from(sorted(SERIES)), st.sampled_from(list(QualityFlag)), max_size=3)
    return st.builds(
        lambda t, v, f: Obj([("ts", t), ("values", v), *([("flags", f)] if f.pairs else [])]),
        ts,
        _plausible_values(kind),
        flags,
    )


def documents(kind: DeviceKind) -> Any:
    common, hostile = common_sets(kind), reading_sets(kind)
    return st.one_of(
        common,
        common,
        hostile,
        st.lists(st.one_of(common, common, hostile), max_size=4).map(lambda b: Obj([("batch", b)])),
        values,
    )


def parse(payload: bytes, kind: DeviceKind, fast: bool) -> Parsed:
    return parse_message(
        telemetry_topic("envmon", "dev-1"),
        payload,
        lookup=lambda _: DeviceInfo(kind, True),
        limits=LIMITS,
        received_at=NOW,
        fast=fast,
    )


def assert_same(payload: bytes, kind: DeviceKind) -> Parsed:
    fast, contract = parse(payload, kind, True), parse(payload, kind, False)
    assert fast.dead == contract.dead
    assert fast.rows == contract.rows
    # equal datetimes may differ in offset; the offset is the device's and must survive too
    assert [(r.ts.utcoffset(), type(r.value)) for r in fast.rows] == [
        (r.ts.utcoffset(), type(r.value)) for r in contract.rows
    ]
    assert (fast.device_id, fast.status) == (contract.device_id, contract.status)
    return fast


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(KINDS), st.sampled_from(["", "", " ", "\n"]))
def test_fast_path_agrees_with_the_contract_on_any_payload(
    data: Any, kind: DeviceKind, space: str
) -> None:
    doc = data.draw(documents(kind))
    p = assert_same(dump(doc, space), kind)
    event(f"rows stored: {bool(p.rows)}, dead letters: {bool(p.dead)}")


def test_the_common_shape_takes_the_fast_path_and_stores_every_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The property above holds trivially if the fast path never answers: it must answer for
    what devices send, with the rows the contract gives."""
    payload = orjson.dumps(
        {
            "ts": "2026-11-25T15:59:00.250+08:00",
            "values": {"pm10": 82.1, "pm25": 40, "noise": 61.5},
            "flags": {"noise": "M"},
        }
    )
    calls: list[object] = []
    real = ReadingSet.model_validate

    def spy(*a: Any, **k: Any) -> Any:
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(ReadingSet, "model_validate", spy)
    p = assert_same(payload, DeviceKind.dust_monitor)
    assert len(calls) == 1  # the contract's path only, not the fast one
    assert p.dead == []
    assert [(r.metric, r.value, r.quality) for r in p.rows] == [
        ("pm10", 82.1, "N"),
        ("pm25", 40.0, "N"),
        ("noise", 61.5, "M"),
    ]
    assert p.rows[0].ts == datetime(2026, 11, 25, 7, 59, 0, 250_000, tzinfo=UTC)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"ts":"2026-11-25T07:59:00Z","values":{"pm10":1.5,"pm10":900.0}}',
        b'{"ts":"2026-11-25T07:59:00Z","values":{"pm10":1.5},"values":{"pm10":2.5}}',
        # a string that starts with a colon must not hide a repeated key from the count
        b'{"ts":"2026-11-25T07:59:00Z","values":{"pm10":1.5,"pm10":2.5},"x":":"}',
        b'{"ts":"2026-11-25T07:59:00Z","values":{"pm10":1.5, "pm10" :2.5}}',
        rb'{"ts":"2026-11-25T07:59:00Z","values":{"pm10":1.5,"pm\u0031\u0030":2.5}}',
    ],
)
def test_a_repeated_key_is_still_a_dead_letter_on_the_fast_path(payload: bytes) -> None:
    p = assert_same(payload, DeviceKind.dust_monitor)
    assert [d.reason.value for d in p.dead] == ["duplicate_key"] and p.rows == []
