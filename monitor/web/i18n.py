"""The page's words in Chinese (first: the inspectors' language) and English."""

from __future__ import annotations

from starlette.requests import Request

LANGS = ("zh-CN", "en")
LANG_COOKIE = "envmon_lang"

_EN: dict[str, str] = {
    "title": "envmon inspection",
    "signin": "Sign in",
    "signin_hint": "Paste your API key (envmon keys create USER).",
    "key": "API key",
    "signout": "Sign out",
    "overview": "Overview",
    "alerts": "Alerts",
    "reports": "Reports",
    "docs": "API docs",
    "open_alerts": "Open alerts by district and device kind",
    "offline": "Devices offline",
    "last_readings": "Last readings",
    "district": "District",
    "kind": "Device kind",
    "firing": "firing",
    "acknowledged": "acknowledged",
    "resolved": "resolved",
    "pending": "pending",
    "warning": "warning",
    "alarm": "alarm",
    "status": "Status",
    "severity": "Severity",
    "any": "any",
    "filter": "Filter",
    "device": "Device",
    "site": "Site",
    "rule": "Rule",
    "basis": "Basis",
    "message": "Message",
    "fired_at": "Fired",
    "last_value": "Last value",
    "peak_value": "Peak",
    "events": "Events",
    "acknowledge": "Acknowledge",
    "resolve": "Resolve",
    "comment": "Comment",
    "note": "Note",
    "age": "Age",
    "last_seen": "Last seen",
    "online": "online",
    "offline_state": "offline",
    "clock_skew": "Clock skew",
    "latest": "Latest values",
    "trend": "Trend",
    "metric": "Metric",
    "hours": "Hours",
    "dust_report": "Dust compliance (construction sites)",
    "water_report": "Water compliance (monitoring points)",
    "from": "From",
    "to": "To",
    "view_json": "View",
    "download_csv": "Download CSV",
    "none": "none",
    "live": "live",
    "bad_key": "That key was not accepted.",
    "throttled": "Too many attempts; wait a minute.",
    "dust_monitor": "dust monitor",
    "water_quality": "water quality",
    "leak_meter": "leak meter",
    "actor": "By",
    "time": "Time",
    "never": "never",
    "seconds": "s",
    "minutes": "min",
    "hours_short": "h",
    "days": "d",
    "no_rights": "Your role may only read.",
    "map": "Map",
    "ack_matching": "Acknowledge all firing alerts shown by these filters",
    "dead_letters": "Dead letters (messages not stored)",
    "reason": "Reason",
    "detail": "Detail",
    "opened": "opened",
    "escalated": "escalated",
    "assigned": "assigned",
    "no_open": "no open alert",
    "assignee": "Assignee",
    "assign": "Assign",
    "nobody": "nobody",
}

_ZH: dict[str, str] = {
    "title": "envmon 巡查",
    "signin": "登录",
    "signin_hint": "粘贴您的 API 密钥（envmon keys create 用户名）。",
    "key": "API 密钥",
    "signout": "退出",
    "overview": "总览",
    "alerts": "告警",
    "reports": "报表",
    "docs": "API 文档",
    "open_alerts": "按区县和设备类型的未结告警",
    "offline": "离线设备",
    "last_readings": "最近数据",
    "district": "区县",
    "kind": "设备类型",
    "firing": "告警中",
    "acknowledged": "已确认",
    "resolved": "已解除",
    "pending": "待定",
    "warning": "预警",
    "alarm": "报警",
    "status": "状态",
    "severity": "级别",
    "any": "全部",
    "filter": "筛选",
    "device": "设备",
    "site": "站点",
    "rule": "规则",
    "basis": "依据",
    "message": "内容",
    "fired_at": "触发时间",
    "last_value": "最新值",
    "peak_value": "峰值",
    "events": "处置记录",
    "acknowledge": "确认",
    "resolve": "解除",
    "comment": "备注",
    "note": "说明",
    "age": "距今",
    "last_seen": "最后上报",
    "online": "在线",
    "offline_state": "离线",
    "clock_skew": "时钟偏差",
    "latest": "最新数值",
    "trend": "趋势",
    "metric": "指标",
    "hours": "小时数",
    "dust_report": "扬尘达标（工地）",
    "water_report": "水质达标（监测点）",
    "from": "起",
    "to": "止",
    "view_json": "查看",
    "download_csv": "下载 CSV",
    "none": "无",
    "live": "实时",
    "bad_key": "密钥无效。",
    "throttled": "尝试次数过多，请一分钟后再试。",
    "dust_monitor": "扬尘监测仪",
    "water_quality": "水质监测仪",
    "leak_meter": "管网漏损计",
    "actor": "操作人",
    "time": "时间",
    "never": "从未",
    "seconds": "秒",
    "minutes": "分钟",
    "hours_short": "小时",
    "days": "天",
    "no_rights": "您的角色只能查看。",
    "map": "地图",
    "ack_matching": "确认筛选结果中全部告警中的告警",
    "dead_letters": "未入库消息",
    "reason": "原因",
    "detail": "详情",
    "opened": "触发",
    "escalated": "升级",
    "assigned": "指派",
    "no_open": "无未结告警",
    "assignee": "负责人",
    "assign": "指派",
    "nobody": "无",
}

assert _EN.keys() == _ZH.keys()
WORDS = {"zh-CN": _ZH, "en": _EN}


def language(request: Request) -> str:
    """`?lang=` first (remembered in a cookie), then the browser's Accept-Language if it
    prefers English; else zh-CN (also when the browser asks for nothing)."""
    asked = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE)
    if asked:
        return "en" if asked.lower().startswith("en") else "zh-CN"
    best, best_q = "zh-CN", -1.0
    for part in request.headers.get("accept-language", "").split(","):
        tag, _, params = part.strip().partition(";")
        if not tag:
            continue
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if q > best_q:
            best, best_q = ("en" if tag.lower().startswith("en") else "zh-CN"), q
    return best
