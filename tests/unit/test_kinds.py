"""One class per rule kind (alerts/kinds.py): every kind the schema accepts has one, the
default packs' rules each get the class of their kind, and what a kind promises the planner
holds (the extremes shortcut never skips a window that could pass a tier)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from alerts.evaluation import level_of
from alerts.kinds import KINDS, HourlyMean, Kind, PeriodMean, Threshold, kind_of
from alerts.packs import load_packs
from alerts.repository import GROUP_SLACK, start_groups
from alerts.schemas import RuleSpec
from monitor.core.models import Aggregate, RuleKind, Severity


class FakeRow(SimpleNamespace):
    """What kind_of reads of a stored rule: attributes and `_mapping`."""

    @property
    def _mapping(self) -> dict[str, Any]:
        return vars(self)


def row(spec: RuleSpec) -> Any:
    return FakeRow(id=1, **spec.model_dump(mode="json"))


PACK_RULES = [spec for pack in load_packs() for spec in pack.rules]


def test_every_kind_has_its_class() -> None:
    assert set(KINDS) == set(RuleKind)
    for kind, cls in KINDS.items():
        assert issubclass(cls, Kind) and cls.kind == kind


@pytest.mark.parametrize("spec", PACK_RULES, ids=lambda s: s.name)
def test_each_pack_rule_is_seen_through_its_kind(spec: RuleSpec) -> None:
    kind = kind_of(row(spec))
    assert kind.kind == spec.kind
    if spec.kind == RuleKind.threshold:
        expected = {Aggregate.period_mean: PeriodMean, Aggregate.hourly_mean: HourlyMean}
        assert type(kind) is expected.get(Aggregate(spec.aggregate), Threshold)
    # what the planner asks of every kind answers without a database
    assert kind.lookback().total_seconds() >= 0
    if spec.kind not in (RuleKind.no_data, RuleKind.composite):
        severity = Severity.alarm if spec.alarm_above or spec.alarm_below else Severity.warning
        text = kind.describe(severity, 123.4)
        assert severity in text
        limit = spec.alarm_above if severity == Severity.alarm else spec.warn_above
        if limit is not None:
            assert f"> {limit:g}" in text


def test_hourly_kinds_read_no_raw_readings_and_flags_read_every_flag() -> None:
    kinds = [kind_of(row(spec)) for spec in PACK_RULES]
    for k in kinds:
        if isinstance(k, HourlyMean) or k.kind in (RuleKind.daily_count, RuleKind.reference_diff):
            assert k.raw_key() is None
        elif k.kind == RuleKind.flag_held:
            assert k.raw_key() == (k.metric, True)
        elif k.kind in (RuleKind.threshold, RuleKind.rate_of_change):
            assert k.raw_key() == (k.metric, False)


@pytest.mark.parametrize("kind", ["rate_of_change", "flag_held", "daily_count", "no_data"])
def test_only_a_threshold_rule_takes_an_aggregate(kind: str) -> None:
    params = {
        "rate_of_change": {"window_s": 600},
        "daily_count": {"hour_above": 150},
    }.get(kind, {})
    metric = "*" if kind in ("flag_held", "no_data") else "pm10"
    with pytest.raises(ValidationError, match="aggregate: only a threshold rule"):
        RuleSpec(
            name="x",
            kind=kind,
            device_kind="dust_monitor",
            metric=metric,
            basis="test",
            aggregate="hourly_mean",
            window_s=3600,
            alarm_above=10,
            params=params,
        )


tier = st.one_of(st.none(), st.floats(-1000, 1000, allow_nan=False))


@given(
    warn_above=tier,
    alarm_above=tier,
    warn_below=tier,
    alarm_below=tier,
    lo=st.floats(-2000, 2000, allow_nan=False),
    width=st.floats(0, 2000, allow_nan=False),
    at=st.floats(0, 1),
)
def test_the_extremes_shortcut_never_skips_a_value_that_passes_a_tier(
    warn_above: float | None,
    alarm_above: float | None,
    warn_below: float | None,
    alarm_below: float | None,
    lo: float,
    width: float,
    at: float,
) -> None:
    """If may_pass says no value between a device's smallest and largest reading can pass a
    tier, then no mean of them (any value in between) does."""
    rule: Any = FakeRow(
        id=1,
        kind="threshold",
        aggregate="mean",
        metric="pm10",
        params={},
        window_s=300,
        for_s=0,
        warn_above=warn_above,
        alarm_above=alarm_above,
        warn_below=warn_below,
        alarm_below=alarm_below,
    )
    kind = kind_of(rule)
    assert kind.bounded_by_extremes()
    hi = lo + width
    value = lo + at * width
    if not kind.may_pass((lo, hi)):
        assert level_of(rule, min(max(value, lo), hi)) is None


@given(st.dictionaries(st.text(min_size=1, max_size=4), st.integers(0, 20 * 24 * 60), max_size=40))
def test_start_groups_cover_every_device_once_and_span_at_most_the_slack(
    minutes: dict[str, int],
) -> None:
    """One query per group reads from the group's earliest start: every device is in exactly
    one group, with its own start, and no group over-reads a device by more than the slack."""
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    begin = {d: t0 + timedelta(minutes=m) for d, m in minutes.items()}
    groups = start_groups(begin)
    merged = {d: ts for g in groups for d, ts in g.items()}
    assert merged == begin
    assert sum(len(g) for g in groups) == len(begin)
    for g in groups:
        assert g and max(g.values()) - min(g.values()) <= GROUP_SLACK
    firsts = [min(g.values()) for g in groups]
    assert firsts == sorted(firsts)
    # and groups are not split needlessly: the next group starts beyond the slack
    for a, b in itertools.pairwise(groups):
        assert min(b.values()) - min(a.values()) > GROUP_SLACK
