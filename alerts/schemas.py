"""Rule definitions as data: the shape of rule packs and of the rules API."""

from __future__ import annotations

import re
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from monitor.core.catalogue import METRICS, DeviceKind, QualityFlag, SiteKind
from monitor.core.models import Aggregate, RuleKind

HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
PERIODS = (900, 3600, 86400)  # calendar periods: 15 min, hour, day

# What each kind's `params` holds (checked below; the evaluator reads the same keys).
PARAMS: dict[RuleKind, set[str]] = {
    RuleKind.threshold: set(),
    RuleKind.rate_of_change: {"window_s"},
    RuleKind.flag_held: {"flags"},
    RuleKind.daily_count: {"hour_above"},
    RuleKind.reference_diff: {"reference_device_ids", "reference_cap"},
    RuleKind.no_data: {"per_interval", "alarm_min_s"},
    RuleKind.composite: {"op", "rules"},
    RuleKind.night_flow_rise: {"history_nights", "min_nights", "warn_min_m3h", "alarm_min_m3h"},
    RuleKind.net_night_flow: set(),
    RuleKind.burst: {"history_days", "min_days", "min_m3h"},
    RuleKind.leakage_rate: set(),
}
# rules whose subject is a DMA site, judged on its daily figures and slots (docs/leakage.md)
SITE_RULE_KINDS = (
    RuleKind.night_flow_rise,
    RuleKind.net_night_flow,
    RuleKind.burst,
    RuleKind.leakage_rate,
)


class RuleSpec(BaseModel):
    """A rule: which devices, what is read, its tiers and timing.

    A value violates a tier when it is above `*_above` or below `*_below`; set both for a
    band (pH 6.5-8.5). The alarm tier must be at least as strict as the warning tier. What
    "the value" is depends on `kind`:

    - threshold: the reading (`aggregate` raw), its rolling mean over `window_s`, or its
      calendar-period mean (`period_mean`, `window_s` 900/3600/86400, valid only with 75% of
      the expected samples flagged N), or the rolling mean of the valid hourly means over
      `window_s` whole hours (`hourly_mean`, judged at each hour's end; `min_samples` counts
      valid hours, as GB 3095-2012's "a 24-hour mean needs 20 hourly values");
    - rate_of_change: the change over `params.window_s` (a drop is negative);
    - flag_held: minutes a reading has been flagged with one of `params.flags` (default D, B);
    - daily_count: hours of the local day whose mean was above `params.hour_above`;
    - reference_diff: hourly mean minus the mean of `params.reference_device_ids` that hour,
      the reference capped at `params.reference_cap`;
    - no_data: minutes without a message (intervals of the device with `params.per_interval`,
      and no alarm before `params.alarm_min_s`), on a timer; `metric` is "*";
    - composite: `params.op` "all"/"any" of the open alerts of `params.rules` on the device.

    A DMA's leakage rules judge the district metered area (the alert's subject is the site;
    `device_kind` "leak_meter", `metric` "flow"; docs/leakage.md):

    - night_flow_rise: percent rise of the night's MNF over the median MNF of the previous
      `params.history_nights` valid nights (default 14; at least `params.min_nights`, default
      7), a tier counting only with a rise of `params.warn_min_m3h` / `params.alarm_min_m3h`
      m³/h (defaults 1 and 2);
    - net_night_flow: (MNF - legitimate night use) per service connection, L/conn/h;
    - burst: the excess of a 15-minute slot's net inflow over the median of the same slot on
      the previous `params.history_days` days (default 14; at least `params.min_days`, default
      7), in percent of the DMA's mean flow over those days, counting only with an excess of
      `params.min_m3h` m³/h (default 1) and, where the DMA has an AZP meter, its pressure
      below that slot's median;
    - leakage_rate: the rolling 12-month CJJ 92 leakage rate R_BL, percent.
    """

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    kind: RuleKind = RuleKind.threshold
    params: dict[str, Any] | None = None
    device_kind: DeviceKind
    site_kinds: list[SiteKind] | None = Field(None, description="Only sites of these kinds")
    site_ids: list[str] | None = Field(None, description="Only these sites")
    site_districts: list[str] | None = Field(None, description="Only sites in these districts")
    device_ids: list[str] | None = Field(None, description="Only these devices")
    metric: str = Field(description='A catalogue metric, or "*" (no_data, flag_held, composite)')
    aggregate: Aggregate = Field(
        Aggregate.raw,
        description="raw, mean over window_s, calendar period_mean, or hourly_mean (the "
        "mean of the valid hourly means over window_s)",
    )
    window_s: int = Field(0, ge=0, le=7 * 86400, description="Rolling window or calendar period")
    min_samples: int = Field(1, ge=1, description="Fewest readings in the window to judge it")
    warn_above: float | None = None
    warn_below: float | None = None
    alarm_above: float | None = None
    alarm_below: float | None = None
    clear_above: float | None = Field(
        None, description="Hysteresis: an open alert clears only at or below this"
    )
    clear_below: float | None = Field(
        None, description="Hysteresis: an open alert clears only at or above this"
    )
    for_s: int = Field(0, ge=0, le=7 * 86400, description="How long a tier must hold to fire")
    auto_resolve: bool = Field(True, description="Resolve by itself once the value is back")
    quiet_s: int = Field(
        600,
        ge=0,
        le=7 * 86400,
        description="How long the value must stay back within limits before auto-resolving "
        "(event time); keeps a value hovering at a threshold from flapping",
    )
    active_from: str | None = Field(None, description='Local start "HH:MM" (e.g. night 22:00)')
    active_to: str | None = Field(None, description='Local end "HH:MM" (e.g. 06:00)')
    basis: str = Field(description="The standard (or 'practice') the thresholds come from")
    legal_limit: bool = Field(False, description="True when the alarm tier is a legal limit")
    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        kind = RuleKind(self.kind)
        params = self.params or {}
        unknown = set(params) - PARAMS[kind]
        if unknown:
            raise ValueError(f"params: {sorted(unknown)} mean nothing to a {kind} rule")
        if kind in SITE_RULE_KINDS and (
            self.device_kind != DeviceKind.leak_meter or self.metric != "flow"
        ):
            raise ValueError(
                f'metric: a {kind} rule judges a DMA\'s flow: device_kind "leak_meter", '
                'metric "flow"'
            )
        if kind in SITE_RULE_KINDS and self.site_kinds not in (None, [SiteKind.dma]):
            raise ValueError(f'site_kinds: a {kind} rule judges DMA sites only: ["dma"]')
        any_metric = kind in (RuleKind.no_data, RuleKind.flag_held, RuleKind.composite)
        if self.metric == "*":
            if not any_metric:
                raise ValueError('metric: "*" is for no_data, flag_held and composite rules')
        else:
            spec = METRICS.get(self.metric)
            if spec is None:
                raise ValueError(f"metric: unknown metric {self.metric!r}")
            if DeviceKind(self.device_kind) not in spec.kinds:
                raise ValueError(f"metric: {self.metric!r} is not measured by a {self.device_kind}")
        tiers = (self.warn_above, self.warn_below, self.alarm_above, self.alarm_below)
        if kind != RuleKind.composite and all(t is None for t in tiers):
            raise ValueError("set at least one of warn_above, warn_below, alarm_above, alarm_below")
        if kind != RuleKind.threshold and self.aggregate != Aggregate.raw:
            # the other kinds say what they judge themselves (a change, a flag run, a count)
            raise ValueError(f"aggregate: only a threshold rule takes one, not a {kind} rule")
        if self.aggregate == Aggregate.mean and self.window_s <= 0:
            raise ValueError("window_s: a mean needs a window longer than 0 s")
        if self.aggregate == Aggregate.hourly_mean and (
            self.window_s < 3600 or self.window_s % 3600
        ):
            raise ValueError("window_s: an hourly_mean window is a whole number of hours")
        if self.aggregate == Aggregate.hourly_mean and self.min_samples > self.window_s // 3600:
            raise ValueError("min_samples: an hourly_mean counts hours; at most window_s / 3600")
        if self.aggregate == Aggregate.period_mean and self.window_s not in PERIODS:
            raise ValueError("window_s: a calendar period is 900, 3600 or 86400 s")
        if None not in (self.warn_above, self.alarm_above) and self.alarm_above < self.warn_above:  # type: ignore[operator]
            raise ValueError("alarm_above: must be >= warn_above (alarm is the stricter tier)")
        if None not in (self.warn_below, self.alarm_below) and self.alarm_below > self.warn_below:  # type: ignore[operator]
            raise ValueError("alarm_below: must be <= warn_below (alarm is the stricter tier)")
        for name in ("active_from", "active_to"):
            value = getattr(self, name)
            if value is not None and not HHMM.match(value):
                raise ValueError(f'{name}: local time as "HH:MM"')
        if (self.active_from is None) != (self.active_to is None):
            raise ValueError("active_to: set both ends of the active window, or neither")
        self._check_params(kind, params)
        return self

    @staticmethod
    def _check_params(kind: RuleKind, params: dict[str, Any]) -> None:
        def need(key: str, kind_of: type | tuple[type, ...]) -> Any:
            value = params.get(key)
            if not isinstance(value, kind_of) or isinstance(value, bool):
                raise ValueError(f"params.{key}: required for a {kind} rule")
            return value

        if kind == RuleKind.rate_of_change and need("window_s", int) <= 0:
            raise ValueError("params.window_s: must be positive")
        if kind == RuleKind.daily_count:
            need("hour_above", (int, float))
        if kind == RuleKind.reference_diff:
            refs = need("reference_device_ids", list)
            if not all(isinstance(r, str) for r in refs):
                raise ValueError("params.reference_device_ids: a list of device ids")
        if kind == RuleKind.flag_held:
            flags = params.get("flags", ["D", "B"])
            valid = {f.value for f in QualityFlag}
            if not isinstance(flags, list) or not flags or set(flags) - valid:
                raise ValueError(f"params.flags: a list of HJ 212 flags from {sorted(valid)}")
        if kind == RuleKind.composite:
            if params.get("op", "all") not in ("all", "any"):
                raise ValueError('params.op: "all" or "any"')
            rules = need("rules", list)
            if len(rules) < 2 or not all(isinstance(r, str) for r in rules):
                raise ValueError("params.rules: the names of two or more rules")


class RuleUpdate(BaseModel):
    """A partial change to a rule; the result is validated as a whole."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    params: dict[str, Any] | None = None
    site_kinds: list[SiteKind] | None = None
    site_ids: list[str] | None = None
    site_districts: list[str] | None = None
    device_ids: list[str] | None = None
    aggregate: Aggregate | None = None
    window_s: int | None = None
    min_samples: int | None = None
    warn_above: float | None = None
    warn_below: float | None = None
    alarm_above: float | None = None
    alarm_below: float | None = None
    clear_above: float | None = None
    clear_below: float | None = None
    for_s: int | None = None
    auto_resolve: bool | None = None
    quiet_s: int | None = None
    active_from: str | None = None
    active_to: str | None = None
    basis: str | None = None
    legal_limit: bool | None = None
    enabled: bool | None = None


class RulePack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pack: str
    description: str = ""
    rules: list[RuleSpec]
