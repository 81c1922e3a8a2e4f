"""Pure DMA leakage figures: night flow, daily leakage and the CJJ 92 rates. No database, no clock.

The daily figures follow issue 12 exactly (sources: standards.md §5.1 CJJ 92-2016, §5.3 MNF):

- a local day is cut into 15-minute slots, indexed from local midnight; a meter's slot value is
  the mean of its N-flagged flow readings in the slot (the caller computes it);
- net inflow of a slot = Σ inlets − Σ outlets, defined only when every inlet and outlet has a value;
- MNF = min over runs of 4 consecutive defined slots wholly inside the night window of their mean;
- LNC = connections × night use per connection / 1000 + special night users;
- net night flow = max(0, MNF − LNC);
- NDF = Σ_h (P_h / P_mnf)^N1 over the day's hours, an hour without pressure counting 1;
- leakage_m3 = net night flow × NDF; leakage_pct = 100 × leakage_m3 / inlet_m3;
- a day whose night window is under 75% covered is invalid: its figures are None, never zero.

CJJ 92 rates are in percent (9.8 means 9.8%); volumes in m³ (converted to 10⁴ m³ where the
standard's A = L / Q_s needs them).
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time

from monitor.core.catalogue import DmaRole

SLOT_S = 900
SLOTS_PER_HOUR = 4
SLOT_H = SLOT_S / 3600
# the MNF is the minimum 1-hour moving average (standards.md §5.3): 4 slots of 15 minutes
MNF_RUN = 4
# share of the night window's slots that must be defined for a valid day (the 75% rule of
# HJ 212-2017 C.20-22 that the other averages use, applied to the night window)
MIN_NIGHT_COVERAGE = 0.75
# longest gap across a day boundary over which a totaliser is interpolated
MAX_TOTALISER_GAP_S = 3600.0


@dataclass(frozen=True, slots=True)
class DmaParams:
    connections: int
    mains_km: float | None = None
    night_from: time = time(2, 0)
    night_to: time = time(4, 0)
    night_use_l_per_conn_h: float = 1.7
    special_night_use_m3h: float = 0.0
    leakage_exponent: float = 1.0

    @property
    def night_use_m3h(self) -> float:
        """LNC, the legitimate night consumption (m³/h)."""
        return self.connections * self.night_use_l_per_conn_h / 1000 + self.special_night_use_m3h


@dataclass(frozen=True, slots=True)
class TotaliserPoint:
    t_s: float  # seconds from local midnight of the day (negative: the day before)
    value: float  # m³


@dataclass(frozen=True, slots=True)
class MeterDay:
    """One meter's data for one local day."""

    device_id: str
    role: DmaRole = DmaRole.inlet
    flow: Mapping[int, float] = field(default_factory=dict)  # slot -> mean flow (m³/h)
    pressure: Mapping[int, float] = field(default_factory=dict)  # slot -> mean pressure (MPa)
    # readings bracketing the day (the last before midnight and the first after the next one
    # included), in time order; empty when the meter has no totaliser
    totaliser: Sequence[TotaliserPoint] = ()


@dataclass(frozen=True, slots=True)
class DmaDay:
    valid: bool
    coverage: float  # share of the day's slots with a defined net inflow
    night_coverage: float  # the same over the night window's slots
    night_use_m3h: float  # LNC
    inlet_m3: float | None
    inlet_source: str | None  # "totaliser" or "slots"
    mnf_m3h: float | None
    mnf_slot: int | None  # first slot of the MNF hour
    net_night_flow_m3h: float | None
    ndf_h: float | None
    leakage_m3: float | None
    leakage_pct: float | None


def night_slots(night_from: time, night_to: time, slots: int = 96) -> range:
    """The slots lying wholly inside the night window [from, to) of one local day."""
    start = night_from.hour * 60 + night_from.minute
    end = night_to.hour * 60 + night_to.minute
    if end <= start:
        raise ValueError("the night window must end after it starts, within the day")
    return range(min(math.ceil(start / 15), slots), min(end // 15, slots))


def net_inflow(meters: Sequence[MeterDay], slots: int = 96) -> dict[int, float]:
    """Σ inlets − Σ outlets per slot, only where every inlet and outlet has a value."""
    flow_meters = [m for m in meters if m.role in (DmaRole.inlet, DmaRole.outlet)]
    if not any(m.role == DmaRole.inlet for m in flow_meters):
        return {}
    out: dict[int, float] = {}
    for s in range(slots):
        values = [m.flow.get(s) for m in flow_meters]
        if any(v is None for v in values):
            continue
        out[s] = sum(
            v if m.role == DmaRole.inlet else -v
            for m, v in zip(flow_meters, values, strict=True)
            if v is not None
        )
    return out


def minimum_night_flow(net: Mapping[int, float], night: range) -> tuple[float, int] | None:
    """(MNF, its first slot): the least mean of 4 consecutive defined slots inside the night."""
    best: tuple[float, int] | None = None
    for first in range(night.start, night.stop - MNF_RUN + 1):
        run = [net.get(s) for s in range(first, first + MNF_RUN)]
        if any(v is None for v in run):
            continue
        mean = math.fsum(v for v in run if v is not None) / MNF_RUN
        if best is None or mean < best[0]:
            best = (mean, first)
    return best


# the burst rule's window: a trailing mean over the last 15 minutes of readings, (t - 15 min, t]
TRAILING_S = 900


class _Readings:
    """One meter's readings of one metric, sorted by time, with prefix sums for window means."""

    __slots__ = ("sums", "times")

    def __init__(self, points: Sequence[tuple[float, float]]) -> None:
        ordered = sorted(points)
        self.times = [t for t, _ in ordered]
        self.sums = [0.0, *itertools.accumulate(v for _, v in ordered)]

    def mean(self, t: float) -> float | None:
        """The mean of the readings in (t - TRAILING_S, t], None without one."""
        lo = bisect_right(self.times, t - TRAILING_S)
        hi = bisect_right(self.times, t)
        return None if hi == lo else (self.sums[hi] - self.sums[lo]) / (hi - lo)


class TrailingMeans:
    """A DMA's trailing 15-minute means at any instant t (epoch seconds), from its meters'
    N-flagged readings: net inflow = Σ inlets − Σ outlets of each meter's mean flow over
    (t − 15 min, t], defined only when every inlet and outlet has a reading in it (as a
    slot's); the zone pressure = the mean over the AZP meters with a reading in it.

    `meters` holds each meter's role and its (time, value) readings: flow for inlets and
    outlets, pressure for AZP points (others are ignored)."""

    def __init__(self, meters: Sequence[tuple[DmaRole, Sequence[tuple[float, float]]]]) -> None:
        self.flows = [
            (_Readings(points), -1.0 if role == DmaRole.outlet else 1.0)
            for role, points in meters
            if role in (DmaRole.inlet, DmaRole.outlet)
        ]
        self.pressures = [_Readings(points) for role, points in meters if role == DmaRole.azp]

    def reading_times(self, since: float) -> list[float]:
        """Every inlet and outlet reading time from `since` on, sorted: where the rule judges."""
        times = {t for r, _ in self.flows for t in r.times[bisect_left(r.times, since) :]}
        return sorted(times)

    def net(self, t: float) -> float | None:
        if not self.flows:
            return None
        total = 0.0
        for readings, sign in self.flows:
            mean = readings.mean(t)
            if mean is None:
                return None
            total += sign * mean
        return total

    def azp(self, t: float) -> float | None:
        values = [m for r in self.pressures if (m := r.mean(t)) is not None]
        return math.fsum(values) / len(values) if values else None


def zone_pressure(meters: Sequence[MeterDay], slots: int = 96) -> dict[int, float]:
    """Per slot, the mean over the AZP meters that have a pressure value."""
    azp = [m for m in meters if m.role == DmaRole.azp]
    out: dict[int, float] = {}
    for s in range(slots):
        values = [m.pressure[s] for m in azp if s in m.pressure]
        if values:
            out[s] = math.fsum(values) / len(values)
    return out


def night_day_factor(
    meters: Sequence[MeterDay], mnf_slot: int, exponent: float, slots: int = 96
) -> float:
    """NDF in hours: Σ over the day's hours of (P_h / P_mnf)^N1; an hour without pressure is 1."""
    hours = slots // SLOTS_PER_HOUR
    pressure = zone_pressure(meters, slots)
    mnf_p = [pressure[s] for s in range(mnf_slot, mnf_slot + MNF_RUN) if s in pressure]
    if not mnf_p or math.fsum(mnf_p) <= 0:
        return float(hours)
    p_mnf = math.fsum(mnf_p) / len(mnf_p)
    total = 0.0
    for h in range(hours):
        hour_p = [
            pressure[s]
            for s in range(h * SLOTS_PER_HOUR, (h + 1) * SLOTS_PER_HOUR)
            if s in pressure
        ]
        p_h = math.fsum(hour_p) / len(hour_p) if hour_p else 0.0
        # a negative or missing hour mean has no meaning as a pressure ratio: it counts 1
        total += (p_h / p_mnf) ** exponent if p_h > 0 else 1.0
    return total


ROLLOVER_NEAR = 0.9  # a drop from within 10% of a power of ten is a rollover, else a reset


def unwrap_totaliser(points: Sequence[TotaliserPoint]) -> list[TotaliserPoint]:
    """A cumulative series with rollovers and resets removed.

    A drop from at least 90% of the next power of ten is a rollover (the register wrapped to 0);
    any other drop is a reset, counted from zero (the volume between the last reading before it
    and the reset itself is unknown and lost).
    """
    out: list[TotaliserPoint] = []
    offset = 0.0
    prev: float | None = None
    for p in points:
        if prev is not None and p.value < prev:
            modulus = 10 ** math.ceil(math.log10(prev)) if prev > 0 else 0.0
            if prev == modulus:  # exactly a power of ten: the register's next one
                modulus *= 10
            offset += modulus if prev >= ROLLOVER_NEAR * modulus else prev
        out.append(TotaliserPoint(p.t_s, p.value + offset))
        prev = p.value
    return out


def _interpolate(points: Sequence[TotaliserPoint], t: float) -> float | None:
    for a, b in itertools.pairwise(points):
        if a.t_s <= t <= b.t_s:
            if b.t_s - a.t_s > MAX_TOTALISER_GAP_S:
                return None
            if b.t_s == a.t_s:
                return a.value
            return a.value + (b.value - a.value) * (t - a.t_s) / (b.t_s - a.t_s)
    return None


def totaliser_volume(points: Sequence[TotaliserPoint], day_s: float) -> float | None:
    """The volume over [0, day_s) from a totaliser, interpolated at both midnights; None when
    readings do not bracket both within an hour."""
    series = unwrap_totaliser(sorted(points, key=lambda p: p.t_s))
    start = _interpolate(series, 0.0)
    end = _interpolate(series, day_s)
    if start is None or end is None:
        return None
    return end - start


def day_figures(meters: Sequence[MeterDay], params: DmaParams, slots: int = 96) -> DmaDay:
    """The day's DMA figures, exactly as issue 12 pins them."""
    night = night_slots(params.night_from, params.night_to, slots)
    net = net_inflow(meters, slots)
    coverage = len(net) / slots
    night_defined = sum(1 for s in night if s in net)
    night_coverage = night_defined / len(night) if len(night) else 0.0
    lnc = params.night_use_m3h
    invalid = DmaDay(
        valid=False,
        coverage=coverage,
        night_coverage=night_coverage,
        night_use_m3h=lnc,
        inlet_m3=None,
        inlet_source=None,
        mnf_m3h=None,
        mnf_slot=None,
        net_night_flow_m3h=None,
        ndf_h=None,
        leakage_m3=None,
        leakage_pct=None,
    )
    if night_coverage < MIN_NIGHT_COVERAGE:
        return invalid
    mnf = minimum_night_flow(net, night)
    if mnf is None:  # 75% covered, yet no whole hour in it
        return invalid
    mnf_m3h, mnf_slot = mnf
    net_night = max(0.0, mnf_m3h - lnc)
    ndf = night_day_factor(meters, mnf_slot, params.leakage_exponent, slots)
    leakage = net_night * ndf

    inlet_m3: float | None = None
    source = "slots"
    flow_meters = [m for m in meters if m.role in (DmaRole.inlet, DmaRole.outlet)]
    volumes = [totaliser_volume(m.totaliser, slots * SLOT_S) for m in flow_meters]
    if flow_meters and all(v is not None for v in volumes):
        inlet_m3 = math.fsum(
            v if m.role == DmaRole.inlet else -v
            for m, v in zip(flow_meters, volumes, strict=True)
            if v is not None
        )
        source = "totaliser"
    else:
        inlet_m3 = math.fsum(net.values()) * SLOT_H
    pct = 100 * leakage / inlet_m3 if inlet_m3 > 0 else None
    return DmaDay(
        valid=True,
        coverage=coverage,
        night_coverage=night_coverage,
        night_use_m3h=lnc,
        inlet_m3=inlet_m3,
        inlet_source=source,
        mnf_m3h=mnf_m3h,
        mnf_slot=mnf_slot,
        net_night_flow_m3h=net_night,
        ndf_h=ndf,
        leakage_m3=leakage,
        leakage_pct=pct,
    )


# ---------------------------------------------------------------------------------------------
# CJJ 92-2016 (standards.md §5.1)

R1_METER_DIFF = 0.08  # 总分表差率: R1 = 0.08 · r · 100%
R2_FACTOR = 0.99
R2_BASELINE_KM_PER_1E4M3 = 0.0693
R2_CLAMP = 3.0
R4_FROST_DEPTH_M = 1.4
GRADE_1 = 10.0
GRADE_2 = 12.0


@dataclass(frozen=True, slots=True)
class Cjj92Inputs:
    supply_m3: float  # Q_s, total supply
    registered_m3: float  # Q_a, registered-user consumption (billed + unbilled authorised)
    annual: bool = True  # False for a period shorter than a year: R_WL only
    residential_metered_m3: float | None = None  # 抄表到户 residential volume
    mains_km: float | None = None  # DN75 and above
    outlet_pressure_mpa: float | None = None  # annual mean outlet pressure of the plants
    frost_depth_m: float | None = None  # maximum frost depth


@dataclass(frozen=True, slots=True)
class Cjj92Rates:
    r_wl: float | None
    r1: float | None = None
    r2: float | None = None  # clamped to ±3
    r2_unclamped: float | None = None
    r3: float | None = None
    r4: float | None = None
    r_bl: float | None = None
    grade: int | None = None


def r3_pressure(mpa: float) -> float:
    """R3 from the annual mean outlet pressure: 0.5 / 1 / 2% above 0.35 / 0.55 / 0.75 MPa."""
    if mpa > 0.75:
        return 2.0
    if mpa > 0.55:
        return 1.0
    if mpa > 0.35:
        return 0.5
    return 0.0


def grade(r_bl: float) -> int | None:
    """CJJ 92 grade: 1 at ≤ 10%, 2 at ≤ 12%, else None."""
    if r_bl <= GRADE_1:
        return 1
    if r_bl <= GRADE_2:
        return 2
    return None


def cjj92(inputs: Cjj92Inputs) -> Cjj92Rates:
    """R_WL, and for annual periods R1-R4, R_BL and the grade, in percent.

    Missing inputs of R1, R3 and R4 count 0 (each of those can only lower R_BL, so none is
    claimed without its input); R2 can be negative, so without mains_km there is no R_BL.
    """
    q_s = inputs.supply_m3
    if q_s <= 0:
        return Cjj92Rates(r_wl=None)
    r_wl = 100 * (q_s - inputs.registered_m3) / q_s
    if not inputs.annual:
        return Cjj92Rates(r_wl=r_wl)
    resid = inputs.residential_metered_m3
    r1 = 100 * R1_METER_DIFF * resid / q_s if resid is not None else 0.0
    r2 = r2_raw = None
    if inputs.mains_km is not None:
        a = inputs.mains_km / (q_s / 1e4)
        r2_raw = 100 * R2_FACTOR * (a - R2_BASELINE_KM_PER_1E4M3)
        r2 = max(-R2_CLAMP, min(R2_CLAMP, r2_raw))
    p = inputs.outlet_pressure_mpa
    r3 = r3_pressure(p) if p is not None else 0.0
    frost = inputs.frost_depth_m
    r4 = 1.0 if frost is not None and frost > R4_FROST_DEPTH_M else 0.0
    r_bl = r_wl - (r1 + r2 + r3 + r4) if r2 is not None else None
    return Cjj92Rates(
        r_wl=r_wl,
        r1=r1,
        r2=r2,
        r2_unclamped=r2_raw,
        r3=r3,
        r4=r4,
        r_bl=r_bl,
        grade=grade(r_bl) if r_bl is not None else None,
    )


def area_rate(items: Sequence[tuple[float, float]]) -> float | None:
    """Σ(R_BL,i · Q_s,i) / Σ Q_s,i over (R_BL, Q_s) pairs (standards.md §5.1)."""
    total = math.fsum(q for _, q in items)
    if total <= 0:
        return None
    return math.fsum(r * q for r, q in items) / total
