"""The payload contract as the ingestor applies it: every bad part is a dead letter with a
reason a person can act on, and good parts beside it are kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.contract import ReadingSet, TelemetryBatch, encode, parse_topic, telemetry_topic
from ingest.validate import DeviceInfo, Limits, Parsed, Reason, parse_message
from monitor.core.catalogue import DeviceKind

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
LIMITS = Limits("envmon", 4096, 10, timedelta(minutes=5))
REGISTRY = {
    "dust-1": DeviceInfo(DeviceKind.dust_monitor, True),
    "water-1": DeviceInfo(DeviceKind.water_quality, True),
    "old-1": DeviceInfo(DeviceKind.dust_monitor, False),
}
TOPIC = telemetry_topic("envmon", "dust-1")


def parse(payload: object, topic: str = TOPIC) -> Parsed:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return parse_message(topic, raw, lookup=REGISTRY.get, limits=LIMITS, received_at=NOW)


def reasons(p: Parsed) -> list[Reason]:
    return [d.reason for d in p.dead]


def test_reading_set_with_offset_is_stored_in_utc() -> None:
    p = parse({"ts": "2026-11-25T15:59:00+08:00", "values": {"pm10": 82.1, "pm25": 40}})
    assert p.dead == []
    assert {(r.metric, r.value) for r in p.rows} == {("pm10", 82.1), ("pm25", 40.0)}
    assert all(r.ts == datetime(2026, 11, 25, 7, 59, tzinfo=UTC) for r in p.rows)
    assert all(r.quality == "N" and r.device_id == "dust-1" for r in p.rows)


def test_epoch_milliseconds_and_flags_are_accepted() -> None:
    ms = int((NOW - timedelta(minutes=1)).timestamp() * 1000)
    p = parse({"ts": ms, "values": {"pm10": 50}, "flags": {"pm10": "D"}})
    assert p.rows[0].ts == NOW - timedelta(minutes=1)
    assert p.rows[0].quality == "D"


def test_batch_keeps_good_sets_beside_a_bad_one() -> None:
    good = {"ts": "2026-11-25T07:00:00Z", "values": {"pm10": 60}}
    ms = int((NOW - timedelta(minutes=2)).timestamp() * 1000)
    p = parse({"batch": [good, {"ts": "yesterday", "values": {"pm10": 1}}, good | {"ts": ms}]})
    assert len(p.rows) == 2
    assert reasons(p) == [Reason.bad_timestamp]
    assert "batch[1]" in p.dead[0].detail


def test_string_and_unknown_values_are_rejected_one_by_one() -> None:
    p = parse(
        {
            "ts": "2026-11-25T07:00:00Z",
            "values": {"pm10": "82", "pm25": 30, "co2": 400, "turbidity": 1.0, "noise": 500},
        }
    )
    assert [r.metric for r in p.rows] == ["pm25"]
    assert sorted(reasons(p)) == sorted(
        [Reason.bad_value, Reason.unknown_metric, Reason.wrong_metric_for_kind, Reason.out_of_range]
    )
    out = next(d for d in p.dead if d.reason == Reason.out_of_range)
    assert "noise=500" in out.detail and "[0, 150]" in out.detail
    assert orjson.loads(out.payload)["values"] == {"noise": 500}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", Reason.bad_json),
        (b'{"ts": "2026-11-25T07:00:00Z", "values": {"pm10": NaN}}', Reason.bad_json),
        (b"x" * 5000, Reason.payload_too_large),
        ({"values": {"pm10": 1}}, Reason.bad_timestamp),
        ({"ts": "2026-11-25T07:00:00Z", "values": {}}, Reason.bad_payload),
        ({"ts": "2026-11-25T07:00:00", "values": {"pm10": 1}}, Reason.bad_timestamp),
        ({"ts": True, "values": {"pm10": 1}}, Reason.bad_timestamp),
        ({"ts": 1764057600, "values": {"pm10": 1}}, Reason.bad_timestamp),  # seconds, not ms
        (b"42", Reason.bad_payload),
        (b"null", Reason.bad_payload),
        ({"ts": "2026-11-25T09:00:00Z", "values": {"pm10": 1}}, Reason.future_timestamp),
        ({"batch": []}, Reason.bad_payload),
        ({"batch": [{"ts": 1, "values": {"pm10": 1}}] * 11}, Reason.batch_too_long),
        ([1, 2], Reason.bad_payload),
        ({"ts": "2026-11-25T07:00:00Z", "values": {"pm10": 1}, "extra": 1}, Reason.bad_payload),
    ],
)
def test_bad_messages_become_dead_letters(payload: object, reason: Reason) -> None:
    p = parse(payload)
    assert p.rows == []
    assert reasons(p) == [reason]
    assert p.dead[0].detail


def test_unknown_retired_and_foreign_topics_are_dead_letters() -> None:
    good = {"ts": "2026-11-25T07:00:00Z", "values": {"pm10": 1}}
    assert reasons(parse(good, telemetry_topic("envmon", "ghost"))) == [Reason.unknown_device]
    assert reasons(parse(good, telemetry_topic("envmon", "old-1"))) == [Reason.retired_device]
    assert reasons(parse(good, "envmon/v1/devices/dust-1/other")) == [Reason.bad_topic]
    assert reasons(parse(good, "elsewhere/dust-1")) == [Reason.bad_topic]


def test_topic_round_trip() -> None:
    assert parse_topic("envmon", telemetry_topic("envmon", "dust-001")) == ("dust-001", "telemetry")
    assert parse_topic("envmon", "envmon/v1/devices/a/b/c") is None


def test_published_encoding_is_accepted_by_the_ingestor() -> None:
    rs = ReadingSet(ts=NOW - timedelta(seconds=5), values={"pm10": 1.5}, flags={})
    p = parse(encode(TelemetryBatch(batch=[rs, rs])))
    assert len(p.rows) == 2 and p.dead == []


@pytest.mark.parametrize("ts", [1e20, -1e20, 1e308, 2**63 - 1, -(2**63)])
def test_an_epoch_past_the_calendar_is_a_bad_timestamp_with_its_device(ts: float) -> None:
    p = parse({"ts": ts, "values": {"pm10": 1.0}})
    assert p.rows == []
    assert reasons(p) == [Reason.bad_timestamp]
    assert p.dead[0].device_id == "dust-1"


def _dumps(doc: object) -> bytes:
    # the stdlib writes what orjson refuses: integers past 64 bits, NaN, Infinity
    return json.dumps(doc).encode()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_reading_like = st.fixed_dictionaries(
    {
        "ts": st.integers() | st.floats() | st.text(max_size=30) | st.just("2026-11-25T08:00:00Z"),
        "values": st.dictionaries(st.sampled_from(["pm10", "pm25", "ph", "x"]), _json, max_size=3),
    },
    optional={"flags": _json, "units": _json},
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    payload=st.binary(max_size=300)
    | _json.map(_dumps)
    | _reading_like.map(_dumps)
    | st.lists(_reading_like, max_size=3).map(lambda b: _dumps({"batch": b})),
    topic=st.sampled_from([TOPIC, "envmon/v1/devices/dust-1/status", "envmon/x", "#"]),
)
def test_any_payload_gives_readings_or_dead_letters_with_a_reason(
    payload: bytes, topic: str
) -> None:
    p = parse(payload, topic)  # never raises
    assert p.rows or p.dead or p.status
    for d in p.dead:
        assert isinstance(d.reason, Reason) and d.detail
    for r in p.rows:
        assert r.device_id == "dust-1" and r.ts.tzinfo is not None
