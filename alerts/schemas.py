"""Rule definitions as data: the shape of rule packs and of the rules API."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from monitor.core.catalogue import METRICS, DeviceKind, SiteKind
from monitor.core.models import Aggregate


class RuleSpec(BaseModel):
    """A threshold rule: which devices, which metric, how it is read, its tiers and timing.

    A value violates a tier when it is above `*_above` or below `*_below`; set both for a
    band (pH 6.5-8.5). The alarm tier must be at least as strict as the warning tier.
    """

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    device_kind: DeviceKind
    site_kinds: list[SiteKind] | None = Field(None, description="Only sites of these kinds")
    site_ids: list[str] | None = Field(None, description="Only these sites")
    device_ids: list[str] | None = Field(None, description="Only these devices")
    metric: str
    aggregate: Aggregate = Field(Aggregate.raw, description="raw value, or mean over window_s")
    window_s: int = Field(0, ge=0, le=7 * 86400, description="Rolling window for aggregate=mean")
    min_samples: int = Field(1, ge=1, description="Fewest readings in the window to judge it")
    warn_above: float | None = None
    warn_below: float | None = None
    alarm_above: float | None = None
    alarm_below: float | None = None
    for_s: int = Field(0, ge=0, le=7 * 86400, description="How long a tier must hold to fire")
    auto_resolve: bool = Field(True, description="Resolve by itself once the value is back")
    quiet_s: int = Field(
        600,
        ge=0,
        le=7 * 86400,
        description="How long the value must stay back within limits before auto-resolving "
        "(event time); keeps a value hovering at a threshold from flapping",
    )
    basis: str = Field(description="The standard (or 'practice') the thresholds come from")
    legal_limit: bool = Field(False, description="True when the alarm tier is a legal limit")
    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        spec = METRICS.get(self.metric)
        if spec is None:
            raise ValueError(f"metric: unknown metric {self.metric!r}")
        if DeviceKind(self.device_kind) not in spec.kinds:
            raise ValueError(f"metric: {self.metric!r} is not measured by a {self.device_kind}")
        tiers = (self.warn_above, self.warn_below, self.alarm_above, self.alarm_below)
        if all(t is None for t in tiers):
            raise ValueError("set at least one of warn_above, warn_below, alarm_above, alarm_below")
        if self.aggregate == Aggregate.mean and self.window_s <= 0:
            raise ValueError("window_s: a mean needs a window longer than 0 s")
        if None not in (self.warn_above, self.alarm_above) and self.alarm_above < self.warn_above:  # type: ignore[operator]
            raise ValueError("alarm_above: must be >= warn_above (alarm is the stricter tier)")
        if None not in (self.warn_below, self.alarm_below) and self.alarm_below > self.warn_below:  # type: ignore[operator]
            raise ValueError("alarm_below: must be <= warn_below (alarm is the stricter tier)")
        return self


class RulePack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pack: str
    description: str = ""
    rules: list[RuleSpec]
