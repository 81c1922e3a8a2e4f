"""Pure parts of what a logger reports about itself: idle limits, RtdInterval, 2021 status,
and the deviation vocabulary the device rows store."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from ingest.hj212.convert import Device, Facts, decode_facts, encode_facts, equipment, rtd_interval
from ingest.hj212.protocol import Frame, Framer, Packet, encode_frame, parse_segment
from ingest.hj212.server import IDLE_INTERVALS, idle_limit_s
from monitor.core.catalogue import HJ212Deviation

TZ = ZoneInfo("Asia/Shanghai")


def packet(segment: str) -> Packet:
    p = parse_segment(segment.encode())
    assert isinstance(p, Packet), p
    return p


@given(
    idle=st.floats(min_value=0.1, max_value=1e5),
    interval=st.integers(min_value=1, max_value=86_400),
    reported=st.none() | st.integers(min_value=1, max_value=86_400),
)
def test_idle_limit_is_the_setting_and_at_least_three_intervals(
    idle: float, interval: int, reported: int | None
) -> None:
    device = Device("d", None, interval, reported)
    limit = idle_limit_s(idle, device)
    assert limit >= idle
    assert limit >= IDLE_INTERVALS * interval
    assert limit >= IDLE_INTERVALS * (reported or 0)
    assert limit in {idle, IDLE_INTERVALS * interval, IDLE_INTERVALS * (reported or 0)}
    assert idle_limit_s(idle, None) == idle  # before login: the setting alone


@given(st.text(max_size=12))
def test_rtd_interval_reads_seconds_or_says_why_not(text: str) -> None:
    cp = text.replace(";", "").replace(",", "").replace("&", "").replace("=", "")
    p = packet(f"QN=1;ST=39;CN=1061;PW=1;MN=M;Flag=5;CP=&&RtdInterval={cp}&&")
    got = rtd_interval(p)
    value = cp.strip()  # the parser strips whitespace around a field's value (§1.11)
    if value.isascii() and value.isdigit() and 1 <= int(value) <= 86_400:
        assert got == int(value)
    else:
        assert isinstance(got, str) and "RtdInterval" in got


@given(
    states=st.dictionaries(
        st.from_regex(r"SB[0-9]{1,3}", fullmatch=True),
        st.tuples(st.integers(-2, 8), st.floats(-1, 30, allow_nan=False)),
        max_size=4,
    )
)
def test_equipment_status_is_read_whole_or_refused_with_a_reason(
    states: dict[str, tuple[int, float]],
) -> None:
    items = ";".join(f"{c}-RS={rs};{c}-RT={rt:.1f}" for c, (rs, rt) in states.items())
    p = packet(f"QN=1;ST=39;CN=2021;PW=1;MN=M;Flag=5;CP=&&DataTime=20261201080000;{items}&&")
    got = equipment(p, TZ)
    valid = all(0 <= rs <= 5 and 0 <= round(rt, 1) <= 24 for rs, rt in states.values())
    if states and valid:
        assert not isinstance(got, str)
        status, at = got
        assert set(status) == set(states)
        assert all(status[c]["RS"] == rs for c, (rs, _) in states.items())
        assert at.tzinfo is TZ and at.hour == 8
    else:
        assert isinstance(got, str) and got


def test_facts_survive_the_writer_queue_and_the_spool() -> None:
    p = packet("QN=1;ST=39;CN=2021;PW=1;MN=M;Flag=5;CP=&&DataTime=20261201080000;SB1-RS=2&&")
    status = equipment(p, TZ)
    assert not isinstance(status, str)
    facts = Facts("d", ["lowercase_crc"], 600, status[0], status[1])
    assert decode_facts(encode_facts(facts)) == facts


def test_every_deviation_the_parser_tolerates_is_in_the_stored_vocabulary() -> None:
    known = {d.value for d in HJ212Deviation}
    seg = "QN=1;ST=39;CN=2011;PW=1;,MN=M;FLAG=5;CP=&& DataTime=20261201080000;a34002-Rtd=1; &&"
    frame = encode_frame(seg)
    odd = frame[:-6] + frame[-6:-2].lower()  # no CRLF, lowercase CRC
    seen: set[str] = set()
    for item in Framer().feed(odd + encode_frame("QN=2;ST=39;CN=2011;PW=1;MN=M;CP=&&&&")):
        assert isinstance(item, Frame), item
        seen.update(item.deviations)
        p = parse_segment(item.segment)
        assert isinstance(p, Packet)
        seen.update(p.deviations)
    # GBK bytes that are no UTF-8 (a short one such as 站 can be both)
    gbk = parse_segment("QN=1;ST=39;CN=2011;PW=1;MN=扬尘监测;Flag=4;CP=&&&&".encode("gbk"))
    assert isinstance(gbk, Packet)
    seen.update(gbk.deviations)
    assert seen <= known
    assert {"stray_comma", "flag_key_case", "cp_spaces", "trailing_separator", "gbk_text"} <= seen
    assert "missing_flag" in seen
