"""Deterministic simulated sensors.

A sample depends only on (seed, device_id, timestamp), so a backfill, a live run and a test
all see the same values for the same instant. Daily patterns follow local time in Linyi.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Literal
from zoneinfo import ZoneInfo

from ingest.contract import ReadingSet
from monitor.core.catalogue import METRICS, DeviceKind

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
# The totaliser integrates flow from here, so it is the same in every process.
TOTALISER_EPOCH = datetime(2026, 1, 1, tzinfo=LOCAL_TZ)

EpisodeKind = Literal["dust", "turbidity", "pressure_drop"]

_DECIMALS = {
    "pm25": 1, "pm10": 1, "tsp": 1, "noise": 1, "wind_speed": 1, "wind_direction": 0,
    "air_temperature": 1, "humidity": 1, "turbidity": 3, "free_chlorine": 2, "ph": 2,
    "conductivity": 0, "water_temperature": 1, "do": 2, "cod": 1, "nh3n": 3, "orp": 0,
    "flow": 1, "pressure": 3, "acoustic_level": 1, "totaliser": 1,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Episode:
    """An injected incident. `magnitude` multiplies pm/turbidity, or is the MPa a pressure_drop
    takes off a mid-band 0.33 MPa (it scales with the pressure at the time)."""

    kind: EpisodeKind
    start: datetime
    end: datetime
    magnitude: float

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("episode start and end must be timezone-aware")
        if self.end <= self.start:
            raise ValueError("episode must end after it starts")

    def weight(self, ts: datetime) -> float:
        """0 outside, 1 on the plateau; linear ramps over the first and last 10%."""
        if not self.start <= ts < self.end:
            return 0.0
        span = (self.end - self.start).total_seconds()
        into = (ts - self.start).total_seconds()
        ramp = 0.1 * span
        return min(1.0, into / ramp, (span - into) / ramp)


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def _cycle(hour: float, peak_hour: float) -> float:
    """Cosine daily cycle: 1 at peak_hour, -1 twelve hours away."""
    return math.cos(2 * math.pi * (hour - peak_hour) / 24)


def _bump(hour: float, centre: float, width: float) -> float:
    """Gaussian peak around centre (hours), wrapping round midnight."""
    distance = min(abs(hour - centre), 24 - abs(hour - centre))
    return math.exp(-0.5 * (distance / width) ** 2)


def _hour(local: datetime) -> float:
    return local.hour + local.minute / 60 + local.second / 3600


def _season(local: datetime, coldest_day: int) -> float:
    """-1 on the coldest day of the year, +1 half a year later."""
    return -math.cos(2 * math.pi * (local.timetuple().tm_yday - coldest_day) / 365.25)


def _finish(metric: str, value: float) -> float:
    spec = METRICS[metric]
    return float(round(_clamp(value, spec.low, spec.high), _DECIMALS[metric]))


class SimulatedDevice:
    """A simulated sensor: `sample(ts)` is a pure function of (seed, device_id, ts)."""

    kind: ClassVar[DeviceKind]

    def __init__(self, device_id: str, *, seed: int = 0, episodes: Iterable[Episode] = ()) -> None:
        self.device_id = device_id
        self.seed = seed
        self.episodes = list(episodes)
        # Per-device character (baseline levels), fixed for the device's life.
        self._traits = random.Random(f"{seed}:{device_id}")

    def sample(self, ts: datetime) -> ReadingSet:
        if ts.tzinfo is None:
            raise ValueError("sample() needs a timezone-aware timestamp")
        rng = random.Random(f"{self.seed}:{self.device_id}:{int(ts.timestamp())}")
        raw = self._values(ts, ts.astimezone(LOCAL_TZ), rng)
        return ReadingSet(ts=ts, values={name: _finish(name, v) for name, v in raw.items()})

    def active(self, kind: EpisodeKind, ts: datetime) -> list[tuple[float, float]]:
        """(ramp weight, magnitude) of each episode of `kind` active at ts."""
        return [
            (e.weight(ts), e.magnitude) for e in self.episodes if e.kind == kind and e.weight(ts)
        ]

    def factor(self, kind: EpisodeKind, ts: datetime) -> float:
        """Multiplier of a multiplying episode: 1 outside, ramping to magnitude on the plateau."""
        return max((1 + (m - 1) * w for w, m in self.active(kind, ts)), default=1.0)

    def _values(self, ts: datetime, local: datetime, rng: random.Random) -> dict[str, float]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.device_id!r}, seed={self.seed})"


class DustMonitor(SimulatedDevice):
    kind = DeviceKind.dust_monitor

    def __init__(self, device_id: str, *, seed: int = 0, episodes: Iterable[Episode] = ()) -> None:
        super().__init__(device_id, seed=seed, episodes=episodes)
        self._level = self._traits.uniform(0.95, 1.08)
        self._prevailing_wind = self._traits.uniform(120, 210)
        self._temp_offset = self._traits.uniform(-0.5, 0.5)

    def _values(self, ts: datetime, local: datetime, rng: random.Random) -> dict[str, float]:
        h = _hour(local)
        # Morning traffic and earthworks, then the evening inversion traps dust.
        pm10 = self._level * (72 + 28 * _bump(h, 8.0, 1.5) + 34 * _bump(h, 19.5, 2.0))
        pm10 *= _clamp(rng.gauss(1, 0.06), 0.85, 1.15) * self.factor("dust", ts)
        if 6 <= local.hour < 22:
            activity = 1 - 0.6 * _bump(h, 12.5, 0.6)  # lunch break on site
            noise = _clamp(54 + 6 * activity + rng.gauss(0, 1.5), 50, 64)
        else:
            noise = _clamp(45.5 + rng.gauss(0, 1.5), 42, 50)
        daily = _cycle(h, 14.5)
        air_temperature = 14 + 13.5 * _season(local, 20) + 4.5 * daily + self._temp_offset
        return {
            "pm10": pm10,
            "pm25": pm10 * rng.uniform(0.5, 0.6),
            "tsp": pm10 * rng.uniform(1.6, 2.0),
            "noise": noise,
            "wind_speed": 1.2 + 1.8 * _bump(h, 14.5, 3.5) + abs(rng.gauss(0, 0.6)),
            "wind_direction": (self._prevailing_wind + rng.gauss(0, 30)) % 360,
            "air_temperature": air_temperature + rng.gauss(0, 0.3),
            "humidity": _clamp(62 + 10 * _season(local, 20) - 8 * daily + rng.gauss(0, 2), 15, 98),
        }


class WaterQualityProbe(SimulatedDevice):
    """A drinking-water probe (plant outlet, network point), or a river section with `river`."""

    kind = DeviceKind.water_quality

    def __init__(
        self,
        device_id: str,
        *,
        seed: int = 0,
        episodes: Iterable[Episode] = (),
        river: bool = False,
    ) -> None:
        super().__init__(device_id, seed=seed, episodes=episodes)
        self.river = river
        t = self._traits
        if river:
            self._base = {
                "do": t.uniform(6.8, 7.2), "ph": t.uniform(7.6, 7.8), "cod": t.uniform(12.5, 15),
                "nh3n": t.uniform(0.35, 0.55), "orp": t.uniform(200, 250),
                "conductivity": t.uniform(520, 680), "turbidity": t.uniform(10, 16),
            }  # fmt: skip
        else:
            self._base = {
                "free_chlorine": t.uniform(0.65, 0.8), "ph": t.uniform(7.25, 7.55),
                "conductivity": t.uniform(400, 500), "turbidity": t.uniform(0.25, 0.3),
            }  # fmt: skip

    def _values(self, ts: datetime, local: datetime, rng: random.Random) -> dict[str, float]:
        h, b = _hour(local), self._base
        turbidity_factor = self.factor("turbidity", ts)
        # Water lags the air by a fortnight; a river swings more over the day than a main.
        water_temperature = (
            13 + 10 * _season(local, 35) + (1.2 if self.river else 0.3) * _cycle(h, 16)
        ) + rng.gauss(0, 0.05)
        if not self.river:
            turbidity = _clamp(
                b["turbidity"] + 0.04 * _cycle(h, 9) + rng.gauss(0, 0.025), 0.18, 0.4
            )
            return {
                "turbidity": turbidity * turbidity_factor,
                # Night: low demand, long residence time, more chlorine decay at the probe.
                "free_chlorine": _clamp(
                    b["free_chlorine"] + 0.08 * _cycle(h, 10) + rng.gauss(0, 0.03), 0.55, 0.95
                ),
                "ph": _clamp(b["ph"] + rng.gauss(0, 0.05), 7.0, 7.8),
                "conductivity": _clamp(
                    b["conductivity"] + 15 * _cycle(h, 6) + rng.gauss(0, 6), 350, 550
                ),
                "water_temperature": water_temperature,
            }
        # Photosynthesis: oxygen, pH and ORP peak mid-afternoon and sag before dawn.
        sun = _cycle(h, 15)
        turbidity = _clamp(b["turbidity"] + 3 * _cycle(h, 10) + rng.gauss(0, 1.2), 5, 30)
        return {
            "do": _clamp(b["do"] + 0.8 * sun + rng.gauss(0, 0.08), 6.0, 8.0),
            "ph": _clamp(b["ph"] + 0.2 * sun + rng.gauss(0, 0.04), 7.2, 8.4),
            "orp": _clamp(b["orp"] + 25 * sun + rng.gauss(0, 6), 150, 300),
            "cod": _clamp(b["cod"] + 1.0 * _cycle(h, 11) + rng.gauss(0, 0.6), 10, 18),
            "nh3n": _clamp(b["nh3n"] + 0.08 * _cycle(h, 7) + rng.gauss(0, 0.03), 0.2, 0.8),
            "conductivity": b["conductivity"] + rng.gauss(0, 10),
            "turbidity": turbidity * turbidity_factor,
            "water_temperature": water_temperature,
        }


# Hourly water demand relative to the daily mean (00:00 .. 23:00), linearly interpolated.
_DEMAND = (
    0.70, 0.55, 0.44, 0.42, 0.45, 0.65, 1.00, 1.35, 1.45, 1.30, 1.20, 1.15,
    1.20, 1.10, 1.05, 1.05, 1.10, 1.25, 1.40, 1.45, 1.35, 1.15, 0.95, 0.80,
)  # fmt: skip
_DEMAND_MEAN = sum(_DEMAND) / 24
_PROFILE = tuple(d / _DEMAND_MEAN for d in _DEMAND)
_P_MIN, _P_MAX = min(_PROFILE), max(_PROFILE)
# Area under the profile from 00:00 to each hour (trapezoids), for the totaliser.
_AREA = [0.0]
for _i in range(24):
    _AREA.append(_AREA[-1] + (_PROFILE[_i] + _PROFILE[(_i + 1) % 24]) / 2)


def _demand(hour: float) -> float:
    i = int(hour) % 24
    frac = hour - int(hour)
    return _PROFILE[i] + (_PROFILE[(i + 1) % 24] - _PROFILE[i]) * frac


def _demand_area(hours: float) -> float:
    """Integral of the demand profile over `hours` from local midnight (24 per full day)."""
    days, rest = divmod(hours, 24)
    i, frac = int(rest), rest - int(rest)
    partial = _PROFILE[i] * frac + (_demand(rest) - _PROFILE[i]) * frac / 2
    return days * 24 + _AREA[i] + partial


# In a DMA meter's night window (02:00-04:00) the profile stays at or below its 04:00 value: the
# customers' flow above this floor is demand, at or below it the legitimate night use.
_NIGHT_FLOOR = max(_PROFILE[2], _PROFILE[3], _PROFILE[4])


def _above(a: float, b: float, floor: float, u: float) -> float:
    """∫_0^u max(0, a + (b − a)s − floor) ds: one hour's linear segment above a floor."""
    k = b - a
    lo, hi = 0.0, u
    if k == 0:
        return u * max(0.0, a - floor)
    root = (floor - a) / k
    if k > 0:
        lo = max(lo, root)
    else:
        hi = min(hi, root)
    if hi <= lo:
        return 0.0
    return ((a + k * lo - floor) + (a + k * hi - floor)) / 2 * (hi - lo)


_DAY_ABOVE = sum(_above(_PROFILE[i], _PROFILE[(i + 1) % 24], _NIGHT_FLOOR, 1) for i in range(24))


def _demand_above_area(hours: float) -> float:
    """Integral over `hours` from local midnight of the profile above the night floor."""
    days, rest = divmod(hours, 24)
    i, frac = int(rest), rest - int(rest)
    whole = sum(_above(_PROFILE[j], _PROFILE[(j + 1) % 24], _NIGHT_FLOOR, 1) for j in range(i))
    part = _above(_PROFILE[i], _PROFILE[(i + 1) % 24], _NIGHT_FLOOR, frac)
    return days * _DAY_ABOVE + whole + part


class LeakMeter(SimulatedDevice):
    """A DMA inlet meter: flow, pressure, pipe acoustics and a cumulative totaliser.

    For leakage work (docs/leakage.md) a meter can be given the DMA's legitimate night use (the
    customers' flow whenever the profile is at or below its night floor, so all through
    02:00-04:00), a constant background leakage on top of the customers' flow, and a totaliser
    register that rolls over at `rollover_m3`.
    """

    kind = DeviceKind.leak_meter

    def __init__(
        self,
        device_id: str,
        *,
        seed: int = 0,
        episodes: Iterable[Episode] = (),
        night_use_m3h: float | None = None,
        leak_m3h: float = 0.0,
        rollover_m3: float | None = None,
    ) -> None:
        super().__init__(device_id, seed=seed, episodes=episodes)
        self._mean_flow = self._traits.uniform(85, 100)
        self._totaliser_base = self._traits.uniform(1e6, 5e6)
        self.night_use_m3h = night_use_m3h
        self.leak_m3h = leak_m3h
        self.rollover_m3 = rollover_m3

    def customer_flow(self, demand: float) -> float:
        """The customers' noiseless flow (m³/h) at a demand-profile value."""
        if self.night_use_m3h is None:
            return self._mean_flow * demand
        return self.night_use_m3h + self._mean_flow * max(0.0, demand - _NIGHT_FLOOR)

    def history(self, stamps: Iterable[datetime]) -> Iterator[tuple[datetime, float, float]]:
        """(time, flow, totaliser) at each stamp, the model of `sample` without its episodes,
        pressure and acoustics, from one random stream: about 50 times quicker, for seeding
        a year of a DMA's history (the values are not those `sample` gives at the same time)."""
        rng = random.Random(f"{self.seed}:{self.device_id}:history")
        for ts in stamps:
            demand = _demand(_hour(ts.astimezone(LOCAL_TZ)))
            flow = self.customer_flow(demand) * rng.gauss(1, 0.03) + self.leak_m3h
            total = self._totaliser_base + self._volume(
                (ts - TOTALISER_EPOCH).total_seconds() / 3600
            )
            if self.rollover_m3 is not None:
                total %= self.rollover_m3
            yield ts, _finish("flow", flow), _finish("totaliser", total)

    def drawn_m3(self, start: datetime, end: datetime) -> float:
        """What the customers drew through this meter over [start, end), m³: its noiseless
        volume without the background leak (registered consumption, for the demo)."""
        h0, h1 = ((t - TOTALISER_EPOCH).total_seconds() / 3600 for t in (start, end))
        return self._volume(h1) - self._volume(h0) - self.leak_m3h * (h1 - h0)

    def _volume(self, hours: float) -> float:
        """Noiseless volume since the totaliser epoch: customers plus background leakage."""
        area = self._mean_flow * _demand_area(hours)
        if self.night_use_m3h is not None:
            area = self.night_use_m3h * hours + self._mean_flow * _demand_above_area(hours)
        return area + self.leak_m3h * hours

    def _values(self, ts: datetime, local: datetime, rng: random.Random) -> dict[str, float]:
        demand = _demand(_hour(local))
        load = (demand - _P_MIN) / (_P_MAX - _P_MIN)  # 0 at minimum night flow, 1 at peak
        bursts = self.active("pressure_drop", ts)
        burst = max((w for w, _ in bursts), default=0.0)
        drop = max((w * m for w, m in bursts), default=0.0)
        # Head losses grow with demand, so pressure falls as flow rises.
        pressure = _clamp(0.395 - 0.14 * load + rng.gauss(0, 0.004), 0.25, 0.40)
        hours = (ts - TOTALISER_EPOCH).total_seconds() / 3600
        flow = self.customer_flow(demand) * rng.gauss(1, 0.03) + self.leak_m3h
        total = self._totaliser_base + self._volume(hours)
        if self.rollover_m3 is not None:
            total %= self.rollover_m3
        return {
            # A burst's outflow depends on the pipe and the pressure, not on the customers: 30%
            # of the meter's mean flow (at night a large share of the inflow, so the burst rule
            # sees it at any hour), or of the flow at the time when that is more.
            "flow": flow + 0.3 * burst * max(flow, self._mean_flow),
            # A burst leaks more at higher pressure, so the drop scales with it: `magnitude` is
            # the drop from mid-band 0.33 MPa, and 0.25 leaves 0.06-0.10 MPa at any hour.
            "pressure": max(pressure - drop * pressure / 0.33, 0.02),
            "acoustic_level": _clamp(22 + 6 * load + rng.gauss(0, 1.2), 20, 35) + 15 * burst,
            # Integrates the noiseless demand curve, so it is monotonic (but for the register's
            # rollover) and needs no state.
            "totaliser": total,
        }
