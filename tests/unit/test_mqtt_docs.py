"""docs/mqtt.md is the contract as device makers read it: every payload it shows goes through
the real validator, and its tables must say what the catalogue, the settings and the code say.

Regenerate the metric table of the document with `python -m tests.unit.test_mqtt_docs`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter

from devices.fleet import EXAMPLE_FLEET, load_fleet_file
from ingest.contract import DEVICE_ID_PATTERN, STATUS, TELEMETRY, Timestamp, parse_topic
from ingest.validate import DeviceInfo, Limits, Parsed, Reason, parse_message
from monitor.core.catalogue import METRICS, DeviceKind, Metric, QualityFlag
from monitor.core.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"
PREFIX = "envmon"
LIMITS = Limits(PREFIX, 262144, 1000, timedelta(minutes=5))
NO_CODE = "—"

FENCE = re.compile(r"^```(\w*)\s*$")
BAD = re.compile(r"^<!--\s*bad:\s*(\w+)\s*-->$")
TOPIC = re.compile(rf"{PREFIX}/v1/devices/[^/\s`'\"]*/(?:{TELEMETRY}|{STATUS})")
MOSQUITTO_TOPIC = re.compile(r"(?:^|\s)-t\s+'?([^\s']+)'?")
# Only single-quoted payloads are literal; a double-quoted one builds its ts in the shell.
MOSQUITTO_PAYLOAD = re.compile(r"(?:^|\s)-m\s+'([^']*)'")


def _registry() -> dict[str, DeviceInfo]:
    """The devices the examples publish as: the demo fleet that `envmon up` users register."""
    fleet = load_fleet_file(EXAMPLE_FLEET)
    return {str(d["id"]): DeviceInfo(DeviceKind(d["kind"]), True) for d in fleet["devices"]}


REGISTRY = _registry()


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    text: str
    bad: Reason | None
    context: list[str]  # document lines above the fence, back to the previous heading


@dataclass(frozen=True)
class Example:
    where: str
    topic: str
    payload: bytes
    bad: Reason | None


def _blocks(lines: list[str]) -> list[Block]:
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1  # closing fence
        above = [ln for ln in lines[:start] if ln.strip()]
        bad = BAD.match(above[-1].strip()) if above else None
        context: list[str] = []
        for ln in reversed(lines[:start]):
            if ln.startswith("#"):
                break
            context.append(ln)
        blocks.append(
            Block(
                lang=m.group(1),
                line=start + 1,
                text="\n".join(body),
                bad=Reason(bad.group(1)) if bad else None,
                context=context,
            )
        )
    return blocks


def _commands(block: Block) -> list[tuple[int, str]]:
    """Shell commands of a block with `\\` continuations joined, each with its first line."""
    commands: list[tuple[int, str]] = []
    pending: list[str] = []
    for offset, ln in enumerate(block.text.splitlines(), start=1):
        if not pending:
            start = block.line + offset
        pending.append(ln.rstrip().removesuffix("\\"))
        if not ln.rstrip().endswith("\\"):
            commands.append((start, " ".join(pending)))
            pending = []
    return commands


def _examples(text: str) -> list[Example]:
    examples: list[Example] = []
    for block in _blocks(text.splitlines()):
        if block.lang == "json":
            # The topic a JSON example is published on is the nearest one named above it.
            topics = [t for ln in block.context for t in TOPIC.findall(ln)]
            assert topics, f"docs/mqtt.md:{block.line}: name the topic above this JSON example"
            examples.append(
                Example(f"json@{block.line}", topics[0], block.text.encode(), block.bad)
            )
        elif block.lang in ("sh", "bash", "shell"):
            for line, command in _commands(block):
                payload = MOSQUITTO_PAYLOAD.search(command)
                if "mosquitto_pub" not in command or payload is None:
                    continue
                topic = MOSQUITTO_TOPIC.search(command)
                assert topic, f"docs/mqtt.md:{line}: mosquitto_pub without -t"
                examples.append(
                    Example(
                        f"mosquitto_pub@{line}",
                        topic.group(1),
                        payload.group(1).encode(),
                        block.bad,
                    )
                )
    return examples


# A missing document fails test_the_document_shows_payloads... rather than collection.
DOC_TEXT = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
EXAMPLES = _examples(DOC_TEXT)
_TS = TypeAdapter(Timestamp)


def _stamps(example: Example) -> list[datetime]:
    if not example.topic.endswith(f"/{TELEMETRY}"):
        return []
    doc: Any = orjson.loads(example.payload)
    sets = doc.get("batch", [doc])
    return [_TS.validate_python(s["ts"]) for s in sets]


def _received_at() -> datetime:
    """As if every example arrived a minute after the latest good one was measured."""
    return max(ts for e in EXAMPLES if e.bad is None for ts in _stamps(e)) + timedelta(minutes=1)


def _parse(example: Example) -> Parsed:
    return parse_message(
        example.topic,
        example.payload,
        lookup=REGISTRY.get,
        limits=LIMITS,
        received_at=_received_at(),
    )


def test_the_document_shows_payloads_of_every_kind_and_bad_examples() -> None:
    good = [e for e in EXAMPLES if e.bad is None]
    assert sum(e.where.startswith("json") for e in good) >= 4
    assert sum(e.where.startswith("mosquitto_pub") for e in good) >= 3
    assert any(e.topic.endswith(f"/{STATUS}") for e in good)
    kinds = set()
    for e in good:
        where = parse_topic(PREFIX, e.topic)
        assert where is not None
        kinds.add(REGISTRY[where[0]].kind)
    assert kinds == set(DeviceKind)
    assert any(b"batch" in e.payload for e in good)
    assert len({e.bad for e in EXAMPLES if e.bad}) >= 4


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_every_example_payload_does_what_the_document_says(example: Example) -> None:
    parsed = _parse(example)
    if example.bad is None:
        details = [f"{d.reason}: {d.detail}" for d in parsed.dead]
        assert details == [], f"docs/mqtt.md {example.where} is rejected"
        assert parsed.rows or parsed.status, f"docs/mqtt.md {example.where} stores nothing"
    else:
        assert [d.reason for d in parsed.dead] == [example.bad], (
            f"docs/mqtt.md {example.where} should give one {example.bad} dead letter, got "
            f"{[(d.reason, d.detail) for d in parsed.dead]}"
        )


@pytest.mark.parametrize("payload", [b"42", b"true", b"null"])
def test_a_bare_json_scalar_is_a_bad_payload_as_documented(payload: bytes) -> None:
    example = Example("scalar", f"{PREFIX}/v1/devices/dust-001/{TELEMETRY}", payload, None)
    assert [d.reason for d in _parse(example).dead] == [Reason.bad_payload]


# --- tables ---------------------------------------------------------------------------------


def _section(heading: str) -> list[str]:
    """Lines of the section whose heading contains `heading`, up to the next heading."""
    lines = DOC_TEXT.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("#") and heading in ln]
    assert len(starts) == 1, f"docs/mqtt.md needs exactly one heading with {heading!r}"
    out: list[str] = []
    for ln in lines[starts[0] + 1 :]:
        if ln.startswith("#"):
            break
        out.append(ln)
    return out


def _table(heading: str) -> list[dict[str, str]]:
    """The first markdown table of a section, as dicts keyed by lower-cased header cells."""
    rows = [ln.strip() for ln in _section(heading) if ln.strip().startswith("|")]
    assert len(rows) >= 3, f"no table under {heading!r}"

    def cells(row: str) -> list[str]:
        return [c.strip() for c in row.strip("|").split("|")]

    header = [h.lower() for h in cells(rows[0])]
    return [dict(zip(header, cells(r), strict=True)) for r in rows[2:]]


def _code(cell: str) -> str:
    return cell.strip().strip("`")


def _fmt(x: float) -> str:
    return f"{x:g}"  # as the out_of_range dead letter prints it


def render_metric_table() -> str:
    """The metric table of docs/mqtt.md, from the catalogue."""
    out = [
        "| metric | unit | physical range | device kind | HJ 212 code | what it is |",
        "|---|---|---|---|---|---|",
    ]
    for m in METRICS.values():
        kinds = ", ".join(f"`{k}`" for k in m.kinds)
        code = f"`{m.hj212}`" if m.hj212 else NO_CODE
        out.append(
            f"| `{m.name}` | {m.unit} | [{_fmt(m.low)}, {_fmt(m.high)}] | {kinds} | {code} | "
            f"{m.description} |"
        )
    return "\n".join(out)


def _range(cell: str) -> tuple[float, float]:
    low, high = cell.strip("[]").split(",")
    return float(low), float(high)


def test_metric_table_is_the_catalogue() -> None:
    table = {_code(r["metric"]): r for r in _table("Metrics")}
    assert list(table) == list(METRICS)
    for name, row in table.items():
        m: Metric = METRICS[name]
        assert row["unit"] == m.unit, name
        assert _range(row["physical range"]) == (m.low, m.high), name
        assert [_code(k) for k in row["device kind"].split(",")] == list(m.kinds), name
        assert _code(row["hj 212 code"]) == (m.hj212 or NO_CODE), name
        assert row["what it is"] == m.description, name


def test_flag_table_lists_every_hj212_flag() -> None:
    table = _table("Data flags")
    assert [_code(r["flag"]) for r in table] == [f.value for f in QualityFlag]


def test_dead_letter_table_lists_every_reason() -> None:
    table = _table("Dead-letter reasons")
    assert [_code(r["reason"]) for r in table] == [r.value for r in Reason]


def test_limits_table_gives_the_settings_defaults() -> None:
    fields = Settings.model_fields
    rows = _table("Limits and defaults")
    assert rows
    for row in rows:
        env = _code(row["setting"])
        assert env.startswith("ENVMON_"), env
        name = env.removeprefix("ENVMON_").lower()
        assert name in fields, env
        assert _code(row["default"]).replace(",", "") == str(fields[name].default), env
    assert (
        fields["mqtt_topic_prefix"].default,
        fields["max_payload_bytes"].default,
        fields["max_batch_items"].default,
        timedelta(seconds=fields["future_tolerance_s"].default),
    ) == LIMITS


def test_device_id_rule_is_the_contract_regex() -> None:
    assert f"`{DEVICE_ID_PATTERN}`" in DOC_TEXT


def test_python_examples_are_valid_python() -> None:
    blocks = [b for b in _blocks(DOC_TEXT.splitlines()) if b.lang == "python"]
    assert blocks
    for b in blocks:
        ast.parse(b.text, filename=f"docs/mqtt.md:{b.line}")


if __name__ == "__main__":
    print(render_metric_table())
