"""HJ 212 packets -> reading sets and dead letters; the code map; throttling; answers."""

from __future__ import annotations

import errno
import socket
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from ingest.contract import ReadingSet
from ingest.hj212.codes import CODES, metric_for, series_for
from ingest.hj212.convert import Device, convert, decode_dead, encode_dead
from ingest.hj212.identity import Throttle
from ingest.hj212.protocol import Packet, Version, parse_segment
from ingest.hj212.server import answer_9014
from ingest.service import Ingestor
from ingest.validate import Reason
from monitor.core.catalogue import METRICS, SERIES
from monitor.core.settings import Settings

TZ = ZoneInfo("Asia/Shanghai")
DUST = Device("dust-1", None)


def packet(segment: str) -> Packet:
    p = parse_segment(segment.encode())
    assert isinstance(p, Packet)
    return p


def test_every_mapped_code_is_a_catalogue_metric_with_that_code() -> None:
    for code, metric in CODES.items():
        assert metric in METRICS, code
        if code not in ("LA", "Leq"):
            assert METRICS[metric].hj212 == code, code
    assert metric_for("a01006") == "air_pressure" and METRICS["air_pressure"].unit == "kPa"
    assert metric_for("B00008") is None  # §1.11: never guessed


def test_period_values_have_their_own_series() -> None:
    assert series_for("pm10", "2011", "Rtd") == "pm10"
    assert series_for("pm10", "2061", "Avg") == "pm10.avg_hour"
    assert series_for("pm10", "2051", "Max") == "pm10.max_minute"
    assert series_for("pm10", "2031", "Min") == "pm10.min_day"
    assert series_for("pm10", "2011", "Avg") is None
    assert series_for("pm10", "2061", "Cou") is None  # no cumulative dust series
    assert SERIES["pm10.avg_hour"].unit == METRICS["pm10"].unit


def test_a_reading_set_is_the_mqtt_contract() -> None:
    p = packet(
        "QN=1;ST=39;CN=2011;PW=123456;MN=X;Flag=5;CP=&&DataTime=20261201080000;"
        "a34002-Rtd=41.5,a34002-Flag=T;LA-Rtd-Rtd=71.0,LA-Rtd-Flag=N;a50001-Rtd=3&&"
    )
    out = convert(p, DUST, "t", "raw", TZ)
    assert out.reading_set is not None
    rs = ReadingSet.model_validate(out.reading_set)
    assert rs.ts.isoformat() == "2026-12-01T08:00:00+08:00"  # DataTime is local time
    assert rs.values == {"pm10": 41.5, "noise": 71.0}
    assert {k: v.value for k, v in rs.flags.items()} == {"pm10": "T", "noise": "N"}
    assert [d.reason for d in out.dead] == [Reason.hj212_unknown_code]
    assert "doubled_suffix" in out.deviations


def test_ng_per_cubic_metre_is_scaled_for_a_device_registered_so() -> None:
    p = packet("CN=2011;MN=X;CP=&&DataTime=20261201080000;a34004-Rtd=75600.000&&")
    out = convert(p, Device("dust-1", "ng/m3"), "t", "raw", TZ)
    assert out.reading_set is not None and out.reading_set["values"] == {"pm25": 75.6}


def test_hourly_means_are_what_the_rules_see_at_the_hours_end_when_registered_so() -> None:
    hour = packet(
        "CN=2061;MN=X;CP=&&DataTime=20261201080000;a34002-Avg=88,a34002-Max=120,"
        "a34002-Flag=N;LA-Avg=60.5&&"
    )
    out = convert(hour, Device("dust-1", None, 3600, None, "hour"), "t", "raw", TZ)
    assert out.reading_set is not None and out.for_rules is not None
    assert out.reading_set["ts"] == "2026-12-01T08:00:00+08:00"  # the series: its start
    assert out.for_rules == {
        "ts": "2026-12-01T09:00:00+08:00",  # the mean: the period's end
        "values": {"pm10": 88.0, "noise": 60.5},
        "flags": {"pm10": "N"},
    }
    # the other periods are stored as before, and real-time values become <metric>.rtd
    assert convert(hour, DUST, "t", "raw", TZ).for_rules is None
    rtd = packet("CN=2011;MN=X;CP=&&DataTime=20261201080000;a34002-Rtd=41.5&&")
    out = convert(rtd, Device("dust-1", None, 60, None, "minute"), "t", "raw", TZ)
    assert out.reading_set is not None and out.reading_set["values"] == {"pm10.rtd": 41.5}
    assert "pm10.rtd" in SERIES and out.for_rules is None


def test_bad_datatime_is_a_dead_letter() -> None:
    out = convert(packet("CN=2011;MN=X;CP=&&DataTime=2026;a34004-Rtd=1&&"), DUST, "t", "r", TZ)
    assert out.reading_set is None and [d.reason for d in out.dead] == [Reason.hj212_bad_cp]


def test_dead_letters_survive_the_queue_encoding() -> None:
    out = convert(packet("CN=2011;MN=X;CP=&&DataTime=2026;a34004-Rtd=1&&"), DUST, "t", "r", TZ)
    assert decode_dead(encode_dead(out.dead)) == out.dead


def test_answer_echoes_qn_in_the_devices_version() -> None:
    p = packet("QN=20261201080000123;ST=39;CN=2011;PW=123456;MN=X;Flag=9;CP=&&&&")
    assert p.version is Version.v2025
    assert answer_9014(p) == (
        b"##0064QN=20261201080000123;ST=91;CN=9014;PW=123456;MN=X;Flag=8;CP=&&&&"
        + answer_9014(p)[-6:]
    )
    assert parse_segment(answer_9014(p)[6:-6]) is not None


def test_throttle_locks_out_after_repeated_failures() -> None:
    t = Throttle(3)
    for i in range(3):
        assert not t.locked("k", float(i))
        t.fail("k", float(i))
    assert t.locked("k", 3.0)
    assert not t.locked("k", 3.0 + 1000)


_KEY = st.text(alphabet="aw0123456789LA-RtdAvgFlagMin", min_size=1, max_size=12)
_VALUE = st.one_of(st.text(max_size=12), st.floats().map(str), st.sampled_from("NFMSDCTB"))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["2011", "2051", "2061", "2031"]),
    st.dictionaries(_KEY, _VALUE, max_size=10),
    st.one_of(st.none(), st.text(max_size=16), st.just("20261201080000")),
)
def test_any_cp_gives_readings_or_dead_letters_never_an_exception(
    cn: str, cp: dict[str, str], when: str | None
) -> None:
    if when is not None:
        cp["DataTime"] = when
    p = Packet({"CN": cn, "MN": "X"}, cp, Version.v2017, True, False)
    out = convert(p, DUST, "t", "raw", TZ)
    if out.reading_set is not None:
        ReadingSet.model_validate(out.reading_set)


def test_envmon_up_runs_without_the_gateway_when_the_default_port_is_busy(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    monkeypatch.setattr("ingest.service.DEFAULT_HJ212_PORT", port)
    engine = create_engine(f"sqlite:///{tmp_path}/x.db")
    ing = Ingestor(Settings(data_dir=tmp_path, hj212_port=port), engine, mqtt=False, hj212=True)
    gateway = ing.gateway
    assert gateway is not None
    ing._start_gateway(gateway)
    assert ing.gateway is None  # warned, and runs without it
    busy.close()


def test_a_chosen_busy_port_is_an_error(tmp_path: object) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    engine = create_engine(f"sqlite:///{tmp_path}/x.db")
    ing = Ingestor(Settings(data_dir=tmp_path, hj212_port=port), engine, mqtt=False, hj212=True)
    assert ing.gateway is not None
    with pytest.raises(OSError) as info:
        ing._start_gateway(ing.gateway)
    assert info.value.errno == errno.EADDRINUSE
    busy.close()
