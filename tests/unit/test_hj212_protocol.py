"""The HJ 212 framer, CRC and parser, pure (no server, no database)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.hj212.protocol import (
    Frame,
    FrameError,
    Framer,
    Malformed,
    Packet,
    Rejected,
    Version,
    crc16,
    crc16_bitwise,
    crc_text,
    encode_frame,
    parse_segment,
    split_key,
)

# HJ 212-2017 Appendix A, the worked example (standards.md §1.2)
WORKED = (
    "QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
    "CP=&&RtdInterval=30&&"
)


def test_crc_of_the_standards_worked_example_is_1c80() -> None:
    assert len(WORKED) == 101
    assert crc_text(WORKED.encode()) == "1C80"
    assert encode_frame(WORKED) == b"##0101" + WORKED.encode() + b"1C80\r\n"


def test_crc_is_not_modbus() -> None:
    # CRC-16/MODBUS gives 0759 on the same bytes (§1.2)
    assert crc_text(WORKED.encode()) != "0759"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_the_table_crc_is_the_standards_bitwise_crc(data: bytes) -> None:
    assert crc16(data) == crc16_bitwise(data)


def frames(items: list[Frame | Rejected]) -> list[Frame]:
    return [i for i in items if isinstance(i, Frame)]


def test_one_byte_at_a_time_gives_the_frame_once() -> None:
    framer = Framer()
    got: list[Frame | Rejected] = []
    for b in encode_frame(WORKED):
        got += framer.feed(bytes([b]))
    assert [f.segment for f in frames(got)] == [WORKED.encode()]
    assert framer.buffered == 0


def test_three_frames_in_one_read_and_garbage_between_them() -> None:
    data = encode_frame(WORKED) + b"xx\x00junk" + encode_frame(WORKED) + encode_frame(WORKED)
    got = Framer().feed(data)
    assert len(frames(got)) == 3
    assert [r.reason for r in got if isinstance(r, Rejected)] == [FrameError.garbage]


def test_bad_crc_is_rejected_and_the_next_frame_still_read() -> None:
    bad = encode_frame(WORKED)[:-6] + b"0000\r\n"
    got = Framer().feed(bad + encode_frame(WORKED))
    assert isinstance(got[0], Rejected) and got[0].reason == FrameError.bad_crc
    assert len(frames(got)) == 1


def test_lowercase_crc_is_accepted_and_recorded() -> None:
    frame = encode_frame(WORKED)
    lower = frame[:-6] + frame[-6:-2].lower() + b"\r\n"
    # 1C80 -> 1c80
    (item,) = Framer().feed(lower)
    assert isinstance(item, Frame) and "lowercase_crc" in item.deviations


def test_frame_without_crlf_is_read_when_the_crc_matches() -> None:
    frame = encode_frame(WORKED)[:-2]
    got = Framer().feed(frame + encode_frame(WORKED))
    assert len(frames(got)) == 2
    assert "no_crlf" in frames(got)[0].deviations


def test_a_length_that_is_not_digits_resyncs() -> None:
    got = Framer().feed(b"##00x1abc" + encode_frame(WORKED))
    assert isinstance(got[0], Rejected) and got[0].reason == FrameError.bad_length
    assert len(frames(got)) == 1


def test_the_buffer_is_bounded() -> None:
    framer = Framer(max_buffer=500)
    got = framer.feed(b"##9999" + b"a" * 600)
    assert any(isinstance(r, Rejected) and r.reason == FrameError.oversize for r in got)
    assert framer.buffered <= 500


def test_parser_reads_fields_by_name_and_the_cp_area() -> None:
    p = parse_segment(WORKED.encode())
    assert isinstance(p, Packet)
    assert p.qn == "20160801085857223" and p.cn == "1062" and p.pw == "100000"
    assert p.version is Version.v2017 and p.needs_answer and not p.split
    assert p.cp == {"RtdInterval": "30"}


def test_parser_tolerates_field_deviations() -> None:
    seg = (
        "ST=39;CN=2011;PW=123456;MN=190720099;CP=&&DataTime=20190923154847;"
        "a34004-Rtd=12000,a34004-Flag=D;LA-Rtd-Rtd=71.0,LA-Rtd-Flag=N;&&"
    )
    p = parse_segment(seg.encode())
    assert isinstance(p, Packet)
    assert p.version is Version.v2005 and not p.needs_answer
    assert {"missing_flag", "trailing_separator"} <= set(p.deviations)
    assert p.cp["LA-Rtd-Rtd"] == "71.0"
    assert split_key("LA-Rtd-Rtd") == ("LA-Rtd", "Rtd")
    assert split_key("a34004-Flag") == ("a34004", "Flag")
    assert split_key("DataTime") is None


def test_2025_version_bits() -> None:
    p = parse_segment(WORKED.replace("Flag=5", "Flag=9").encode())
    assert isinstance(p, Packet) and p.version is Version.v2025 and p.needs_answer


def test_malformed_cp_is_reported() -> None:
    assert isinstance(parse_segment(b"QN=1;CN=2011;Flag=5;CP=&&a34004-Rtd&&"), Malformed)
    assert isinstance(parse_segment(b"QN=1;CN=2011;Flag=5"), Malformed)
    assert isinstance(parse_segment(b"QN=1;CN=2011;Flag=777;CP=&&&&"), Malformed)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.just(encode_frame(WORKED))), max_size=8))
def test_any_bytes_give_frames_or_rejections_never_an_exception(chunks: list[bytes]) -> None:
    framer = Framer(max_buffer=4096)
    for chunk in chunks:
        for item in framer.feed(chunk):
            assert isinstance(item, Frame | Rejected)
            if isinstance(item, Frame):
                assert isinstance(parse_segment(item.segment), Packet | Malformed)
        assert framer.buffered <= 4096


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_segment_parses_or_is_malformed(segment: bytes) -> None:
    assert isinstance(parse_segment(segment), Packet | Malformed)
