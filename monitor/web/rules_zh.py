"""The default rules' words in Chinese: a short title for lists, the description, the basis.

The rule packs (alerts/packs/*.toml) describe each default rule in English, and that is what
the rules table and the API hold. The page shows a default rule in Chinese while its stored
text is still the pack's own (compared field by field: an admin who rewrote a rule's
description, or its basis, sees that text, in every language). A rule created through the
API shows its own text. The source markers [S], [U], [C] of shared/reference/standards.md
stay as they are: they say how well each figure is confirmed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple

from alerts.packs import load_packs


class Zh(NamedTuple):
    title: str
    description: str
    basis: str


_OFFLINE = (
    "设备离线：预警 3×RtdInterval，报警 max(600 秒, 6×RtdInterval)，standards.md §6（实践经验）"
)
_FLAG_FAULT = Zh(
    "数据标记故障",
    "数据标记为 D（仪器故障）或 B（通讯故障）持续超过 1 小时",
    "HJ 212-2017 表 8 数据标记 [C]；D 或 B 持续超过 1 小时即报警（standards.md §6，实践经验）",
)
_OFFLINE_TAIL = "连续 3 个（预警）或 6 个（报警，且至少 10 分钟）上报周期无消息"
_HOURS_24 = (
    "至少 20 个有效小时值的均值（GB 3095-2012 表 4 [U]；小时样本达 75% 为有效小时，HJ 212 [C]）"
)

RULES_ZH: dict[str, Zh] = {
    # black_odorous.toml: 城市黑臭水体整治工作指南 (2015)
    "bo-do-1h": Zh(
        "溶解氧小时均值（黑臭）",
        "溶解氧小时均值处于轻度黑臭（< 2.0）或重度黑臭（< 0.2）范围",
        "《城市黑臭水体整治工作指南》（2015）溶解氧 0.2–2.0 为轻度黑臭，< 0.2 为重度黑臭 [S]",
    ),
    "bo-nh3n-4h": Zh(
        "氨氮 4 小时均值（黑臭）",
        "氨氮 4 小时均值处于轻度黑臭（> 8）或重度黑臭（> 15）范围",
        "《城市黑臭水体整治工作指南》（2015）氨氮 8–15 为轻度黑臭，> 15 为重度黑臭 [S]",
    ),
    "bo-orp-1h": Zh(
        "氧化还原电位小时均值（黑臭）",
        "氧化还原电位小时均值处于轻度黑臭（< 50 mV）或重度黑臭（< -200 mV）范围",
        "《城市黑臭水体整治工作指南》（2015）氧化还原电位 -200～50 mV [U：未找到公开来源，请核实]",
    ),
    # drinking_water.toml: GB 5749-2022
    "dw-turbidity-outlet-15min": Zh(
        "出厂水浑浊度 15 分钟均值",
        "水厂出厂水浑浊度，15 分钟均值",
        "GB 5749-2022 浑浊度 ≤ 1 NTU [S]；预警档为实践经验",
    ),
    "dw-turbidity-network-15min": Zh(
        "管网水浑浊度 15 分钟均值",
        "管网监测点浑浊度，15 分钟均值",
        "GB 5749-2022 浑浊度 ≤ 1 NTU [S]",
    ),
    "dw-free-chlorine-outlet-high": Zh(
        "出厂水游离氯偏高",
        "水厂出厂水游离氯过高，15 分钟均值",
        "GB 5749-2022 出厂水游离氯 ≤ 2 mg/L [S]",
    ),
    "dw-free-chlorine-outlet-low": Zh(
        "出厂水余氯偏低",
        "水厂出厂水游离氯余量过低，15 分钟均值",
        "GB 5749-2022 出厂水余量 ≥ 0.3 mg/L [U：请核对官方文本]",
    ),
    "dw-free-chlorine-network-low": Zh(
        "末梢水余氯偏低",
        "管网监测点（末梢水）游离氯余量过低，15 分钟均值",
        "GB 5749-2022 末梢水余量 ≥ 0.05 mg/L [S]",
    ),
    "dw-ph-15min": Zh(
        "pH 超出 6.5–8.5",
        "pH 15 分钟均值超出 6.5–8.5",
        "GB 5749-2022 pH 6.5–8.5 [S]；预警区间为实践经验",
    ),
    "water-offline": Zh("水质监测仪离线", "水质探头" + _OFFLINE_TAIL, _OFFLINE),
    "water-flag-fault": _FLAG_FAULT,
    # dust.toml: 扬尘在线监测
    "dust-pm10-1h": Zh(
        "PM10 小时均值",
        "施工工地 PM10 小时均值",
        "HJ 633-2012 PM10 分段浓度限值 150/250 µg/m³ [S]；GB 3095-2012 二级 24 小时 150 [S]；"
        "按小时分级为实践经验",
    ),
    "dust-pm10-15min": Zh(
        "PM10 15 分钟均值",
        "PM10 15 分钟均值：工地喷淋降尘的快速触发",
        "实践经验（快速触发）；上海 DB31/964-2016 按 15 分钟均值评判 [S]",
    ),
    "dust-pm10-24h": Zh(
        "PM10 24 小时均值",
        "PM10 24 小时均值（小时均值的均值），对照环境空气二级浓度限值",
        "GB 3095-2012 二级 24 小时 PM10 150 µg/m³ [S]；" + _HOURS_24,
    ),
    "dust-pm25-1h": Zh(
        "PM2.5 小时均值",
        "PM2.5 小时均值",
        "GB 3095-2012 24 小时 75 µg/m³ [S]；HJ 633-2012 分段浓度限值 115 [S]；按小时分级为实践经验",
    ),
    "dust-pm25-24h": Zh(
        "PM2.5 24 小时均值",
        "PM2.5 24 小时均值（小时均值的均值），对照环境空气二级浓度限值",
        "GB 3095-2012 二级 24 小时 PM2.5 75 µg/m³ [S]；" + _HOURS_24,
    ),
    "dust-tsp-1h": Zh(
        "TSP 小时均值",
        "TSP（总悬浮颗粒物）小时均值",
        "陕西 DB61/1078-2017 TSP 小时浓度 0.7–0.8 mg/m³ [S]；预警档为实践经验",
    ),
    "dust-tsp-24h": Zh(
        "TSP 24 小时均值",
        "TSP 24 小时均值（小时均值的均值），对照环境空气二级浓度限值",
        "GB 3095-2012 二级 24 小时 TSP 300 µg/m³ [S]；" + _HOURS_24,
    ),
    "dust-noise-1h": Zh(
        "场界噪声（昼间）",
        "施工场界等效声级 LAeq 小时值，昼间（06:00–22:00）",
        "GB 12523-2011 昼间限值 70 dB(A) [S]；预警档为实践经验",
    ),
    "dust-noise-night-1h": Zh(
        "场界噪声（夜间）",
        "施工场界等效声级 LAeq 小时值，夜间（22:00–06:00）",
        "GB 12523-2011 夜间限值 55 dB(A) [S]；预警档为实践经验",
    ),
    "dust-pm10-exceeding-hours": Zh(
        "PM10 每日超标小时数",
        "每个自然日（当地时间）的超标小时数：PM10 小时均值高于 150 的小时为超标，"
        "一天超过 2 小时为不达标日",
        "计数规则：每天超标不超过 2 次，河北 DB13/2934-2019 [S]；"
        "PM10 小时值 150 = HJ 633-2012 分段浓度限值 [S]",
    ),
    "dust-pm10-reference-diff": Zh(
        "PM10 与背景站之差",
        "工地 PM10 小时均值减去同一小时国控/省控背景站的均值（该均值封顶 150）。"
        "在背景站登记并列入 params.reference_device_ids 之前停用。",
        "差值法，限值 80 µg/m³，区县均值封顶 150：河北 DB13/2934-2019 [S]；"
        "山东征求意见稿采用同一方法，其限值 [U]",
    ),
    "dust-wind-10min": Zh(
        "风速 10 分钟均值",
        "风速 10 分钟均值：停止土方作业的参考",
        "实践经验：蒲福风级 4/5 级停止土方作业 [U]",
    ),
    "dust-offline": Zh("扬尘监测仪离线", "扬尘监测仪" + _OFFLINE_TAIL, _OFFLINE),
    "dust-flag-fault": _FLAG_FAULT,
    # supply_network.toml: 供水管网压力与 DMA 漏损
    "net-pressure-low-5min": Zh(
        "管网压力偏低",
        "管网压力 5 分钟均值低于服务压力下限",
        "管网末梢压力 ≥ 0.14 MPa（城镇供水服务标准）[S]；预警档为实践经验",
    ),
    "net-pressure-negative": Zh(
        "管网负压",
        "负压：有污染风险",
        "避免负压（GB 50013-2018 背景）[S]",
    ),
    "net-pressure-high-1h": Zh(
        "管网压力偏高",
        "管网压力小时均值偏高：漏损随压力增大",
        "CJJ 92-2016 R3 压力分档用作筛查 [S-derived]；实践经验",
    ),
    "net-offline": Zh("管网漏损计离线", "管网漏损计" + _OFFLINE_TAIL, _OFFLINE),
    "net-flag-fault": _FLAG_FAULT,
    "net-pressure-drop-5min": Zh(
        "压力骤降",
        "压力快速下降：5 分钟内的变化",
        "压降爆管筛查：5 分钟内下降 ≥ 0.03 / 0.05 MPa，standards.md §6（厂商实践 [U]）",
    ),
    "net-inflow-rise-5min": Zh(
        "进水流量骤升",
        "进水流量快速上升：5 分钟内的变化",
        "与压降一同用于爆管筛查（standards.md §6：压降伴随进水流量上升 ≥ 20%）；"
        "m³/h 绝对值为实践经验 [U]，需按 DMA 调整",
    ),
    "net-burst": Zh(
        "爆管",
        "爆管：同一表计压力下降且进水流量上升",
        "pressure_drop_burst：压降 ≥ 0.05 MPa 且进水流量上升，standards.md §6（实践经验 [U]）",
    ),
    "dma-night-flow-rise": Zh(
        "夜间最小流量上升",
        "当晚夜间最小流量高于前 14 个有效夜晚的中位数（新增漏点）",
        "夜间最小流量（MNF）对比前 14 晚中位数：+20%（且 ≥ 1 m³/h）预警，+50%（且 ≥ 2 m³/h）"
        "报警；MNF 方法 [S]，阈值为实践经验（standards.md §5.6、§6）",
    ),
    "dma-net-night-flow": Zh(
        "户均净夜间流量",
        "每个接户的净夜间流量：（夜间最小流量 − 合理夜间用水）/ 接户数",
        "净夜间流量 6 / 12 L/户/h；合理夜间用水 1–6 L/户/h [S]，阈值为实践经验（standards.md §6）",
    ),
    "dma-burst": Zh(
        "DMA 爆管",
        "15 分钟净进水量比前 14 天同一 15 分钟时段高出 DMA 平均流量的 10%（报警：20%）"
        "（且 ≥ 1 m³/h；装有 AZP 表时其压力同时下降）：判为爆管",
        "净进水量高于同时段中位数 10%（且 1 m³/h）持续 15 分钟；报警取压降爆管规则的进水上升 20%；"
        "实践经验 [U]（standards.md §5.5、§6）",
    ),
    "dma-leakage-rate-12m": Zh(
        "滚动 12 个月漏损率",
        "滚动 12 个月漏损率 R_BL 高于 CJJ 92 一级（10%）或二级（12%）",
        "CJJ 92-2016（2018 年修订）漏损率分级 10% / 12% [S]；城市规划目标低于 10%"
        "（standards.md §5、§6）",
    ),
    # surface_water.toml: GB 3838-2002, III 类为默认目标
    "sw-do-1h": Zh(
        "溶解氧小时均值",
        "溶解氧小时均值低于 III 类目标（预警）或 V 类（报警）",
        "GB 3838-2002 溶解氧 III 类 ≥ 5、V 类 ≥ 2 mg/L [S]",
    ),
    "sw-nh3n-4h": Zh(
        "氨氮 4 小时均值",
        "氨氮 4 小时均值高于 III 类（预警）或 V 类（报警）",
        "GB 3838-2002 氨氮 III 类 1.0、V 类 2.0 mg/L [S]",
    ),
    "sw-cod-4h": Zh(
        "化学需氧量 4 小时均值",
        "化学需氧量（COD）4 小时均值高于 III 类（预警）或 V 类（报警）",
        "GB 3838-2002 COD III 类 20、V 类 40 mg/L [S]",
    ),
    "sw-ph-1h": Zh(
        "pH 小时均值",
        "pH 小时均值超出 6–9（报警）；超出 6.5–8.5（预警）",
        "GB 3838-2002 pH 6–9 [S]；预警区间为实践经验",
    ),
}


@dataclass(frozen=True, slots=True)
class RuleText:
    """What the page says of a rule: a title for lists (the rule's name unless a Chinese
    title stands in), its description and its basis."""

    title: str
    description: str
    basis: str


@cache
def pack_texts() -> dict[str, tuple[str, str]]:
    """Each default rule's English (description, basis), by name, as the packs ship it."""
    return {r.name: (r.description, r.basis) for p in load_packs() for r in p.rules}


def rule_text(rule: Mapping[str, Any], lang: str) -> RuleText:
    """The rule's words in the page's language: Chinese for a default rule whose stored text
    is the pack's own, field by field; the stored text otherwise."""
    name = str(rule["name"])
    description, basis = str(rule.get("description") or ""), str(rule.get("basis") or "")
    zh, shipped = RULES_ZH.get(name), pack_texts().get(name)
    if lang != "zh-CN" or zh is None or shipped is None:
        return RuleText(name, description, basis)
    same_description = description == shipped[0]
    return RuleText(
        zh.title if same_description else name,
        zh.description if same_description else description,
        zh.basis if basis == shipped[1] else basis,
    )
