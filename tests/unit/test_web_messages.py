"""Alert messages in Chinese say what the evaluator's English says, number for number."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from alerts.kinds import describe
from monitor.web.messages import alert_message, describe_zh, event_note

BASE: dict[str, Any] = {
    "metric": "pm10",
    "aggregate": "raw",
    "window_s": 0,
    "params": None,
    "warn_above": None,
    "alarm_above": None,
    "warn_below": None,
    "alarm_below": None,
}
RULES: dict[str, dict[str, Any]] = {
    "raw": {"kind": "threshold", "warn_above": 150, "alarm_above": 250},
    "mean": {"kind": "threshold", "aggregate": "mean", "window_s": 900, "alarm_above": 80},
    "band": {"kind": "threshold", "metric": "ph", "warn_below": 6.5, "warn_above": 8.5},
    "falling": {
        "kind": "rate_of_change",
        "metric": "pressure",
        "params": {"window_s": 900},
        "alarm_below": -0.05,
    },
    "reference": {"kind": "reference_diff", "alarm_above": 40},
    "no_data": {"kind": "no_data", "metric": "*", "warn_above": 30, "alarm_above": 120},
    "intervals": {
        "kind": "no_data",
        "metric": "*",
        "params": {"per_interval": True},
        "alarm_above": 3,
    },
    "flag": {"kind": "flag_held", "metric": "D", "alarm_above": 60},
    "daily": {"kind": "daily_count", "alarm_above": 3},
    "composite": {
        "kind": "composite",
        "metric": "*",
        "params": {"op": "any", "rules": ["pm10-raw", "wind-high"]},
    },
}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def english(rule: dict[str, Any], severity: str, value: float) -> str:
    """The engine's own message (alerts/kinds.py), for a rule given as its fields."""
    row = SimpleNamespace(kind=rule["kind"], aggregate=rule["aggregate"], _mapping=rule)
    return describe(row, severity, value)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize(("severity", "value"), [("warning", 162.5), ("alarm", -0.081)])
def test_chinese_message_carries_the_english_ones_numbers(
    name: str, severity: str, value: float
) -> None:
    rule = {**BASE, **RULES[name]}
    zh = describe_zh(rule, severity, value)
    assert zh is not None
    assert NUMBER.findall(zh) == NUMBER.findall(english(rule, severity, value))
    assert ("报警" if severity == "alarm" else "预警") in zh
    assert not re.search(r"[a-z]{3,}", zh.replace("pm10-raw", "").replace("wind-high", ""))


def test_chinese_threshold_message_reads_as_the_inspectors_write_it() -> None:
    rule = {**BASE, **RULES["raw"]}
    assert describe_zh(rule, "alarm", 310) == "PM10 310 µg/m³（报警：> 250 µg/m³）"
    band = {**BASE, **RULES["band"]}
    assert describe_zh(band, "warning", 9.1) == "pH 9.1 pH（预警：> 8.5 pH 或 < 6.5 pH）"


def alert(**fields: Any) -> SimpleNamespace:
    return SimpleNamespace(
        **{"message": "pm10 310 µg/m³ (alarm: > 250 µg/m³)", "severity": "alarm"}
        | {"peak_value": 310.0}
        | fields
    )


def test_page_message_falls_back_to_the_stored_english() -> None:
    rule = {**BASE, **RULES["raw"]}
    assert alert_message(alert(), rule, "zh-CN") == "PM10 310 µg/m³（报警：> 250 µg/m³）"
    assert alert_message(alert(), rule, "en") == "pm10 310 µg/m³ (alarm: > 250 µg/m³)"
    assert alert_message(alert(), None, "zh-CN") == "pm10 310 µg/m³ (alarm: > 250 µg/m³)"
    unknown = {**rule, "kind": "a_kind_from_the_future"}
    assert alert_message(alert(), unknown, "zh-CN") == "pm10 310 µg/m³ (alarm: > 250 µg/m³)"


def test_maintenance_and_late_data_markers_are_kept() -> None:
    rule = {**BASE, **RULES["raw"]}
    stored = "[maintenance: 更换滤膜] pm10 310 µg/m³ (alarm: > 250 µg/m³)"
    shown = alert_message(alert(message=stored), rule, "zh-CN")
    assert shown == "[维护：更换滤膜] PM10 310 µg/m³（报警：> 250 µg/m³）"
    event = SimpleNamespace(
        kind="opened",
        actor="system:evaluator",
        severity="warning",
        value=180.0,
        note="[from late data] pm10 180 µg/m³ (warning: > 150 µg/m³)",
    )
    assert event_note(event, rule, "zh-CN") == "[迟到数据] PM10 180 µg/m³（预警：> 150 µg/m³）"
    assert event_note(event, rule, "en") == event.note
    person = SimpleNamespace(**{**vars(event), "actor": "user:li.ming", "note": "到场"})
    assert event_note(person, rule, "zh-CN") == "到场"  # people's notes are theirs


def test_assignment_words_in_chinese_the_persons_note_kept() -> None:
    def assigned(note: str) -> SimpleNamespace:
        return SimpleNamespace(kind="assigned", actor="user:li.ming", note=note)

    rule = {**BASE, **RULES["raw"]}
    assert event_note(assigned("assigned to wang.fang"), rule, "zh-CN") == "指派给 wang.fang"
    shown = event_note(assigned("assigned to wang.fang: 请今天到场"), rule, "zh-CN")
    assert shown == "指派给 wang.fang: 请今天到场"
    assert event_note(assigned("unassigned"), rule, "zh-CN") == "取消指派"
    assert event_note(assigned("assigned to wang.fang"), rule, "en") == "assigned to wang.fang"
