"""docs/hj212.md as integrators read it: every frame it shows is a good frame and does what the
text says, and its list of the public frames the tests use is the tests' own list."""

from __future__ import annotations

import re
from pathlib import Path
from zoneinfo import ZoneInfo

from ingest.hj212 import protocol
from ingest.hj212.convert import Device, convert
from ingest.hj212.protocol import Frame, Framer, Packet, parse_segment
from ingest.hj212.server import answer_9014
from tests.integration import test_hj212

DOC = (Path(__file__).resolve().parents[2] / "docs" / "hj212.md").read_text(encoding="utf-8")
TESTS = Path(test_hj212.__file__).read_text(encoding="utf-8")
TZ = ZoneInfo("Asia/Shanghai")


def blocks() -> list[str]:
    """The lines of the doc's fenced code blocks, one string per line, in order."""
    return [
        line
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", DOC, re.S | re.M)
        for line in block.splitlines()
    ]


def framed(line: str) -> Packet:
    (frame,) = Framer().feed(line.encode() + b"\r\n")
    assert isinstance(frame, Frame), line  # CRC and length right
    packet = parse_segment(frame.segment)
    assert isinstance(packet, Packet), line
    return packet


def test_every_frame_in_the_doc_is_good_and_the_answer_is_the_gateways() -> None:
    lines = blocks()
    frames = [i for i, line in enumerate(lines) if line.startswith("##")]
    assert len(frames) >= 2
    for i in frames:
        framed(lines[i])
    # the answer shown is the one the gateway builds for the frame shown before it
    (answer,) = [i for i, line in enumerate(lines) if line.startswith("QN=") and "CN=9014" in line]
    asked = max(i for i in frames if i < answer)
    assert answer_9014(framed(lines[asked]))[6:-6].decode() == lines[answer]
    # and that frame is the field frame the tests answer, as published
    assert (lines[asked] + "\r\n").encode() == test_hj212.YC_DUST


def test_the_minute_example_stores_what_the_text_says() -> None:
    (line,) = [line for line in blocks() if line.startswith("##") and "CN=2051" in line]
    out = convert(framed(line), Device("dust-1", None, 60, None, "minute"), "t", line, TZ)
    assert out.reading_set is not None and out.for_rules is not None
    assert out.reading_set["ts"] == "2026-12-01T08:00:00+08:00"
    assert out.reading_set["values"] == {
        "pm10.avg_minute": 400.0, "pm10.min_minute": 395.0, "pm10.max_minute": 405.0
    }  # fmt: skip
    assert out.for_rules["ts"] == "2026-12-01T08:01:00+08:00"
    assert out.for_rules["values"] == {"pm10": 400.0} and out.for_rules["flags"] == {"pm10": "N"}


def test_the_docs_list_of_public_frames_is_the_tests() -> None:
    section = DOC[DOC.index("## Frames the tests use") :]
    section = section[: section.index("\n## ", 1)]
    rows = [r for r in section.splitlines() if r.startswith("| `")]
    listed = {name for r in rows for name in re.findall(r"`([A-Z0-9_]+)`", r.split("|")[1])}
    field_frames = {
        name
        for name, value in vars(test_hj212).items()
        if name.isupper() and isinstance(value, bytes) and value.startswith(b"##")
    }
    assert listed == field_frames - {"WORKED"}  # the standard's own example, not a field frame
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        for commit in re.findall(r"`([0-9a-f]{8})`", cells[1]):
            # the doc's commit is the one the test cites for that frame
            assert re.search(rf"commit(?:\s|#)+{commit}[0-9a-f]{{32}}", TESTS), (cells[0], commit)
        for index_id in re.findall(r"index id (\d+)", cells[1]):
            assert f"index id {index_id}" in TESTS, (cells[0], index_id)
    assert protocol.crc_text(test_hj212.BAD_CRC[6:-6]) != test_hj212.BAD_CRC[-6:-2].decode()
