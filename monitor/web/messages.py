"""Alert messages in Chinese, from an alert's structured fields.

The evaluator stores one English message per alert (and per event), built from the rule,
the severity and a value (each kind's `describe` in `alerts/kinds.py`). The page rebuilds
the same sentence in Chinese from those same fields; the stored English text stays the
fallback for a rule kind this module does not know, and for every language but zh-CN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alerts.evaluator import LATE_TAG
from alerts.service import SYSTEM_ACTOR
from monitor.core.catalogue import SERIES
from monitor.core.models import Aggregate, RuleKind, Severity

# the evaluator's marker of an alert opened in a maintenance window (alerts/evaluator.py)
MAINTENANCE_TAG = "[maintenance: "

METRIC_ZH = {
    "pm25": "PM2.5",
    "pm10": "PM10",
    "tsp": "TSP（总悬浮颗粒物）",
    "pm1": "PM1.0",
    "noise": "噪声",
    "wind_speed": "风速",
    "wind_direction": "风向",
    "air_temperature": "气温",
    "humidity": "湿度",
    "air_pressure": "气压",
    "turbidity": "浊度",
    "free_chlorine": "游离氯",
    "ph": "pH",
    "conductivity": "电导率",
    "water_temperature": "水温",
    "do": "溶解氧",
    "cod": "化学需氧量（COD）",
    "nh3n": "氨氮",
    "orp": "氧化还原电位",
    "flow": "流量",
    "pressure": "压力",
    "acoustic_level": "管道噪声",
    "totaliser": "累计流量",
}
SEVERITY_ZH = {Severity.warning.value: "预警", Severity.alarm.value: "报警"}


def metric_zh(metric: str) -> str:
    return METRIC_ZH.get(metric, metric)


def describe_zh(rule: Mapping[str, Any], severity: str, value: float) -> str | None:
    """The evaluator's description of (rule, severity, value), in Chinese; None for a rule
    kind it does not know (the caller shows the stored English then)."""
    kind = rule["kind"]
    sev = SEVERITY_ZH.get(severity, severity)
    prefix = "alarm" if severity == Severity.alarm else "warn"
    above, below = rule.get(f"{prefix}_above"), rule.get(f"{prefix}_below")
    params = rule.get("params") or {}

    def limit(unit: str = "") -> str:
        tail = f" {unit}" if unit else ""
        parts = [f"> {above:g}{tail}"] if above is not None else []
        parts += [f"< {below:g}{tail}"] if below is not None else []
        return " 或 ".join(parts)

    if kind == RuleKind.no_data:
        unit = "个周期" if params.get("per_interval") else "分钟"
        return f"无数据 {value:.1f} {unit}（{sev}：{limit(unit)}）"
    if kind == RuleKind.composite:
        joiner = " 且 " if params.get("op", "all") == "all" else " 或 "
        return f"{joiner.join(params.get('rules', []))}（{sev}）"
    if kind == RuleKind.flag_held:
        return (
            f"{metric_zh(rule['metric'])} 数据标记持续 {value:.0f} 分钟（{sev}：{limit('分钟')}）"
        )
    if kind == RuleKind.daily_count:
        return f"今日超标 {value:.0f} 小时（{sev}：{limit()}）"
    if kind not in (RuleKind.threshold, RuleKind.rate_of_change, RuleKind.reference_diff):
        return None
    series = SERIES.get(str(rule["metric"]))
    if series is None:
        return None
    unit = series.unit
    how = ""
    if kind == RuleKind.rate_of_change:
        how = f" {int(params.get('window_s', 0)) // 60} 分钟内变化"
    elif kind == RuleKind.reference_diff:
        how = " 小时均值与参照站之差"
    elif rule.get("aggregate", Aggregate.raw) != Aggregate.raw:
        how = f" {int(rule.get('window_s') or 0) // 60} 分钟均值"
    return f"{metric_zh(rule['metric'])}{how} {value:.4g} {unit}（{sev}：{limit(unit)}）"


def alert_message(alert: Any, rule: Mapping[str, Any] | None, lang: str) -> str:
    """What the page shows as the alert's message: the stored English unless the page is in
    Chinese and the sentence can be rebuilt from the alert's fields (the evaluator describes
    an alert by its severity and peak value)."""
    english = str(alert.message)
    if lang != "zh-CN" or rule is None:
        return english
    zh = describe_zh(rule, str(alert.severity), float(alert.peak_value))
    if zh is None:
        return english
    if english.startswith(MAINTENANCE_TAG) and "] " in english:
        reason = english[len(MAINTENANCE_TAG) : english.index("] ")]
        zh = f"[维护：{reason}] {zh}"
    return zh


def event_note(event: Any, rule: Mapping[str, Any] | None, lang: str) -> str:
    """An event's note on the page, in Chinese where the page is: the evaluator's notes of
    pending, opened and escalated (a description of the event's own severity and value) and
    the words an assignment is recorded with. What people wrote stays as they wrote it."""
    note = str(event.note or "")
    if lang == "zh-CN" and event.kind == "assigned":
        # the API's own wording (routes/alerts.py assign_alert), then the person's note
        for english, chinese in (("assigned to ", "指派给 "), ("unassigned", "取消指派")):
            if note.startswith(english):
                return chinese + note[len(english) :]
        return note
    if (
        lang != "zh-CN"
        or rule is None
        or event.kind not in ("pending", "opened", "escalated")
        or event.severity is None
        or event.value is None
        or event.actor != SYSTEM_ACTOR
    ):
        return note
    zh = describe_zh(rule, str(event.severity), float(event.value))
    if zh is None:
        return note
    return ("[迟到数据] " if note.startswith(LATE_TAG) else "") + zh
