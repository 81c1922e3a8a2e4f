"""HJ 212 wire format, pure: CRC16, a stream framer and a tolerant data-segment parser.

Nothing here raises on bad input: the framer yields frames or `Rejected` items with a reason,
the parser returns a `Packet` or a `Malformed` with a reason (standards.md §1.1-§1.5, §1.11).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

HEADER = b"##"
TAIL = b"\r\n"
# The standard caps the data segment at 1024 chars, but loggers in the field send more
# (lua-HJ212 accepts 9800); anything the 4-digit length can say is framed, the writer's
# payload limit applies after that.
MAX_DATA_LEN = 9999
# One frame plus slack: a connection that buffers more than this without a frame is sending
# garbage and the buffer is cut back to the next `##`.
MAX_BUFFER = 2 * (2 + 4 + MAX_DATA_LEN + 4 + 2)
RAW_EXCERPT = 1024


def crc16_bitwise(data: bytes) -> int:
    """HJ 212-2017 Appendix A "ANSI CRC16", as the standard describes it. Not CRC-16/MODBUS:
    the register is shifted right by 8 before the byte is XORed in (standards.md §1.2; the
    worked example gives 0x1C80)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ byte
        for _ in range(8):
            lsb = crc & 1
            crc >>= 1
            if lsb:
                crc ^= 0xA001
    return crc


def _table() -> tuple[int, ...]:
    out = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        out.append(crc)
    return tuple(out)


# `(crc >> 8) ^ byte` is always below 256, so the eight shifts that follow depend on that
# byte alone: one table lookup per byte gives the same result as crc16_bitwise, 8x faster.
_TABLE = _table()


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc = _TABLE[(crc >> 8) ^ byte]
    return crc


def crc_text(data: bytes) -> str:
    return f"{crc16(data):04X}"


def encode_frame(segment: str) -> bytes:
    """`##` + 4-digit length + segment + CRC + CRLF, length and CRC over the UTF-8 bytes."""
    body = segment.encode()
    return b"%s%04d%s%s%s" % (HEADER, len(body), body, crc_text(body).encode(), TAIL)


class FrameError(StrEnum):
    bad_length = "bad_length"
    bad_crc = "bad_crc"
    oversize = "oversize"
    garbage = "garbage"


@dataclass(frozen=True, slots=True)
class Frame:
    segment: bytes  # the data segment, CRC checked
    raw: bytes
    deviations: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: FrameError
    detail: str
    raw: bytes


def _cut(raw: bytes) -> bytes:
    return raw[:RAW_EXCERPT]


class Framer:
    """Bytes in, frames out. Split reads, several frames per read and garbage between frames
    are all handled; after anything unreadable it resynchronises on the next `##`."""

    __slots__ = ("_buf", "_max_buffer")

    def __init__(self, max_buffer: int = MAX_BUFFER) -> None:
        self._buf = bytearray()
        self._max_buffer = max_buffer

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | Rejected]:
        self._buf += data
        out: list[Frame | Rejected] = []
        while True:
            item = self._next()
            if item is None:
                break
            out.append(item)
        if len(self._buf) > self._max_buffer:
            out.append(
                Rejected(FrameError.oversize, "buffer limit reached", _cut(bytes(self._buf)))
            )
            self._resync(1)
        return out

    def _resync(self, start: int) -> None:
        """Drop everything before the next `##` at or after `start`."""
        nxt = self._buf.find(HEADER, start)
        if nxt < 0:
            # keep a trailing '#' that may be the first half of a header
            keep = 1 if self._buf.endswith(b"#") else 0
            del self._buf[: len(self._buf) - keep]
        else:
            del self._buf[:nxt]

    def _next(self) -> Frame | Rejected | None:
        buf = self._buf
        start = buf.find(HEADER)
        if start < 0:
            if len(buf) > 1:
                junk = bytes(buf[:-1]) if buf.endswith(b"#") else bytes(buf)
                self._resync(0)
                if junk.strip():
                    return Rejected(FrameError.garbage, "bytes outside a frame", _cut(junk))
            return None
        if start > 0:
            junk = bytes(buf[:start])
            del buf[:start]
            if junk.strip():
                return Rejected(FrameError.garbage, "bytes outside a frame", _cut(junk))
        if len(buf) < 6:
            return None
        digits = bytes(buf[2:6])
        if not digits.isdigit():
            raw = bytes(buf[:64])
            self._resync(2)
            return Rejected(FrameError.bad_length, f"length field {digits!r} is not 4 digits", raw)
        length = int(digits)
        end = 6 + length + 4
        if len(buf) < end + 2:
            # A `##` inside the awaited bytes means this header lied about its length (or the
            # frame was cut): wait only while no complete frame could start there.
            nxt = buf.find(HEADER, 6)
            if nxt >= 0 and _complete_frame_at(buf, nxt):
                raw = bytes(buf[:nxt])
                del buf[:nxt]
                return Rejected(
                    FrameError.bad_length, "declared length runs into the next frame", _cut(raw)
                )
            return None
        return self._take(length, end)

    def _take(self, length: int, end: int) -> Frame | Rejected:
        buf = self._buf
        segment = bytes(buf[6 : 6 + length])
        crc_field = bytes(buf[6 + length : end])
        deviations: list[str] = []
        if bytes(buf[end : end + 2]) != TAIL:
            # Some loggers omit CRLF, others declare a length that does not match: when the
            # CRC checks out at the declared length the frame is good; otherwise find the tail.
            alt = _realign(buf)
            if alt is not None:
                return alt
            if not _crc_ok(segment, crc_field):
                raw = bytes(buf[:end])
                self._resync(2)
                return Rejected(
                    FrameError.bad_length, "no CRLF after the declared length", _cut(raw)
                )
            deviations.append("no_crlf")
            consumed = end
        else:
            consumed = end + 2
        raw = bytes(buf[:consumed])
        if not _crc_ok(segment, crc_field):
            del buf[:consumed]
            return Rejected(
                FrameError.bad_crc,
                f"CRC {crc_field.decode('ascii', 'replace')} != {crc_text(segment)}",
                _cut(raw),
            )
        if crc_field != crc_field.upper():
            deviations.append("lowercase_crc")  # §1.11: `...&&7d00` occurs in the field
        del buf[:consumed]
        return Frame(segment, raw, tuple(deviations))


def _crc_ok(segment: bytes, crc_field: bytes) -> bool:
    try:
        return int(crc_field.decode("ascii"), 16) == crc16(segment) and len(crc_field) == 4
    except ValueError:
        return False


def _complete_frame_at(buf: bytearray, at: int) -> bool:
    digits = bytes(buf[at + 2 : at + 6])
    if len(digits) < 4 or not digits.isdigit():
        return False
    end = at + 6 + int(digits) + 4
    return len(buf) >= end + 2 and buf[end : end + 2] == TAIL


def _realign(buf: bytearray) -> Frame | Rejected | None:
    """A declared length off by a few bytes: the frame is readable if a CRLF ends it and the
    CRC before the CRLF matches the bytes in between (§1.11, "declared length not matching")."""
    tail = buf.find(TAIL, 6)
    nxt = buf.find(HEADER, 6)
    if tail < 10 or (0 <= nxt < tail):
        return None
    segment = bytes(buf[6 : tail - 4])
    if not _crc_ok(segment, bytes(buf[tail - 4 : tail])):
        return None
    raw = bytes(buf[: tail + 2])
    del buf[: tail + 2]
    return Frame(segment, raw, ("length_mismatch",))


# --- the data segment ------------------------------------------------------------------------


class Version(StrEnum):
    v2005 = "2005"
    v2017 = "2017"
    v2025 = "2025"


_VERSION_BITS = {0: Version.v2005, 1: Version.v2017, 2: Version.v2025}
VERSION_FLAG = {v: bits << 2 for bits, v in _VERSION_BITS.items()}


@dataclass(slots=True)
class Packet:
    fields: dict[str, str]
    cp: dict[str, str]  # CP key=value, in order; `code-suffix` keys as sent
    version: Version
    needs_answer: bool
    split: bool
    deviations: list[str] = field(default_factory=list)

    @property
    def qn(self) -> str | None:
        return self.fields.get("QN")

    @property
    def mn(self) -> str | None:
        return self.fields.get("MN")

    @property
    def cn(self) -> str | None:
        return self.fields.get("CN")

    @property
    def pw(self) -> str | None:
        return self.fields.get("PW")


@dataclass(frozen=True, slots=True)
class Malformed:
    detail: str


_CP_START = "CP=&&"


def parse_segment(segment: bytes) -> Packet | Malformed:
    """Fields by name (not by position, §1.3), the CP area as key=value pairs (§1.5)."""
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError:
        # §1.11: Chinese text arrives in GBK from some loggers
        try:
            text = segment.decode("gbk")
        except UnicodeDecodeError:
            return Malformed("data segment is neither UTF-8 nor GBK")
        deviations: list[str] = ["gbk_text"]
    else:
        deviations = []
    at = text.find(_CP_START)
    if at < 0:
        return Malformed("no CP=&& in the data segment")
    head, cp_text = text[:at], text[at + len(_CP_START) :]
    if not cp_text.endswith("&&"):
        return Malformed("CP area does not end with &&")
    cp_text = cp_text[:-2]
    fields: dict[str, str] = {}
    for part in head.split(";"):
        stripped = part.strip().strip(",")  # §1.11: a stray ',' before MN
        if stripped != part.strip() and "stray_comma" not in deviations:
            deviations.append("stray_comma")
        part = stripped
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            return Malformed(f"header field {part[:40]!r} has no '='")
        key = key.strip()
        if key.upper() == "FLAG" and key != "Flag":
            deviations.append("flag_key_case")  # §1.11: `FLAG=`
            key = "Flag"
        fields[key] = value.strip()
    cp = _parse_cp(cp_text, deviations)
    if isinstance(cp, Malformed):
        return cp
    flag_text = fields.get("Flag")
    if flag_text is None:
        # 2005 loggers and some 2017 ones omit Flag (§1.3): version 2005, no answer asked
        deviations.append("missing_flag")
        flag = 0
    elif flag_text.isascii() and flag_text.isdigit() and int(flag_text) <= 255:
        flag = int(flag_text)
    else:
        return Malformed(f"Flag={flag_text[:20]!r} is not 0-255")
    version = _VERSION_BITS.get((flag >> 2) & 0x3F)
    if version is None:
        return Malformed(f"Flag={flag} has unknown version bits")
    return Packet(fields, cp, version, bool(flag & 1), bool(flag & 2), deviations)


def _parse_cp(text: str, deviations: list[str]) -> dict[str, str] | Malformed:
    """Items by ';', fields of an item by ',' (§1.5); real frames mix the two, so both split."""
    cp: dict[str, str] = {}
    stripped = text.strip()
    if stripped != text:
        deviations.append("cp_spaces")  # §1.11: spaces after `&&`
    if stripped.endswith(";") or stripped.endswith(","):
        deviations.append("trailing_separator")  # §1.11: `;` before the closing `&&`
    for part in re.split(r"[;,]", stripped):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            return Malformed(f"CP item {part[:40]!r} is not key=value")
        if key in cp and cp[key] != value:
            return Malformed(f"CP key {key[:40]!r} given twice with different values")
        cp[key] = value
    return cp


def split_key(key: str) -> tuple[str, str] | None:
    """`a34002-Rtd` -> ("a34002", "Rtd"), on the last '-' (§1.5: `LA-Rtd-Rtd` keeps its code
    as `LA-Rtd`, handled by the caller); None for keys without a suffix (DataTime, ...)."""
    code, sep, suffix = key.rpartition("-")
    if not sep or not code or not suffix:
        return None
    return code, suffix
