"""Every default rule reads in Chinese on the page; edited and user-created rules read as
they were written."""

from __future__ import annotations

import re

import pytest

from alerts.packs import load_packs
from alerts.schemas import RuleSpec
from monitor.web.rules_zh import RULES_ZH, rule_text

DEFAULTS = [(p.pack, r) for p in load_packs() for r in p.rules]
HAN = re.compile(r"[\u4e00-\u9fff]")


def test_every_default_rule_has_chinese_words_and_no_stray_entry() -> None:
    names = {r.name for _, r in DEFAULTS}
    assert len(names) == len(DEFAULTS) >= 40
    missing = sorted(names - RULES_ZH.keys())
    assert missing == [], f"default rules without a Chinese description: {missing}"
    assert sorted(RULES_ZH.keys() - names) == []  # a renamed rule leaves no dead entry


@pytest.mark.parametrize("rule", [r for _, r in DEFAULTS], ids=lambda r: r.name)
def test_a_default_rule_in_each_language(rule: RuleSpec) -> None:
    stored = {"name": rule.name, "description": rule.description, "basis": rule.basis}
    zh = rule_text(stored, "zh-CN")
    for words in (zh.title, zh.description, zh.basis):
        assert HAN.search(words), words
    assert (zh.title, zh.description, zh.basis) == tuple(RULES_ZH[stored["name"]])
    # the standards the basis cites are the same ones in both languages
    cited = set(re.findall(r"\b(?:GB|HJ|CJJ|DB\d\d)[/ ]?[\d.]+-\d{4}", stored["basis"]))
    assert cited <= set(re.findall(r"\b(?:GB|HJ|CJJ|DB\d\d)[/ ]?[\d.]+-\d{4}", zh.basis))
    # the confirmation markers of standards.md stay: how sure each figure is
    for marker in ("[S]", "[C]", "[S-derived]"):
        assert stored["basis"].count(marker) == zh.basis.count(marker), marker
    assert stored["basis"].count("[U") == zh.basis.count("[U")
    en = rule_text(stored, "en")
    assert (en.title, en.description, en.basis) == (rule.name, rule.description, rule.basis)


def test_an_edited_default_rule_shows_what_the_admin_wrote() -> None:
    _, rule = DEFAULTS[0]
    edited = {"name": rule.name, "description": "our own words", "basis": rule.basis}
    zh = rule_text(edited, "zh-CN")
    assert (zh.title, zh.description) == (rule.name, "our own words")
    assert zh.basis == RULES_ZH[rule.name].basis  # the basis was not touched: still Chinese
    rebased = {"name": rule.name, "description": rule.description, "basis": "local order 7"}
    assert rule_text(rebased, "zh-CN").basis == "local order 7"
    assert rule_text(rebased, "zh-CN").description == RULES_ZH[rule.name].description


def test_a_user_created_rule_shows_its_own_text() -> None:
    mine = {"name": "pm10-raw", "description": "工地自定义", "basis": "GB 3095-2012 test"}
    for lang in ("zh-CN", "en"):
        t = rule_text(mine, lang)
        assert (t.title, t.description, t.basis) == ("pm10-raw", "工地自定义", "GB 3095-2012 test")
    # no description at all: the name, and an empty description
    assert rule_text({"name": "x", "description": None, "basis": None}, "zh-CN").description == ""
