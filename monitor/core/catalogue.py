"""The metric catalogue: every metric envmon accepts, its fixed unit and its physical range.

The payload contract, the ingestor, the rules and the simulators all read this one table.
A value outside `physical_range` cannot come from a working sensor (it is a unit mix-up or a
fault), so the ingestor dead-letters it instead of storing it. HJ 212 factor codes are given
where the reference names them (shared/reference/standards.md §1, §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DeviceKind(StrEnum):
    dust_monitor = "dust_monitor"
    water_quality = "water_quality"
    leak_meter = "leak_meter"


class SiteKind(StrEnum):
    construction_site = "construction_site"
    water_plant = "water_plant"
    network_point = "network_point"
    river_section = "river_section"
    dma = "dma"


class DmaRole(StrEnum):
    """What a leak meter is to its DMA (a meter has one role; inlet when none is given)."""

    inlet = "inlet"  # water entering the DMA
    outlet = "outlet"  # water leaving to another DMA: subtracted from the inflow
    azp = "azp"  # average-zone-pressure point
    acoustic = "acoustic"  # noise logger: no part in the water balance


class QualityFlag(StrEnum):
    """HJ 212-2017 Table 8 data flags. Only N counts toward averages and compliance."""

    normal = "N"
    stopped = "F"
    maintenance = "M"
    manual = "S"
    fault = "D"
    calibration = "C"
    over_range = "T"
    comms_fault = "B"


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str
    description: str
    kinds: tuple[DeviceKind, ...]
    low: float
    high: float
    hj212: str | None = None

    def in_range(self, value: float) -> bool:
        return self.low <= value <= self.high


_D = (DeviceKind.dust_monitor,)
_W = (DeviceKind.water_quality,)
_L = (DeviceKind.leak_meter,)

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("pm25", "µg/m³", "PM2.5 mass concentration", _D, 0, 20000, "a34004"),
        Metric("pm10", "µg/m³", "PM10 mass concentration", _D, 0, 20000, "a34002"),
        Metric("tsp", "µg/m³", "Total suspended particulates", _D, 0, 50000, "a34001"),
        Metric("pm1", "µg/m³", "PM1.0 mass concentration", _D, 0, 20000, "a34005"),
        Metric("noise", "dB(A)", "A-weighted sound level (LAeq)", _D, 0, 150, "LA"),
        Metric("wind_speed", "m/s", "Wind speed", _D, 0, 75, "a01007"),
        Metric("wind_direction", "°", "Wind direction, clockwise from north", _D, 0, 360, "a01008"),
        Metric("air_temperature", "°C", "Air temperature", _D, -60, 70, "a01001"),
        Metric("humidity", "%RH", "Relative humidity", _D, 0, 100, "a01002"),
        Metric("air_pressure", "kPa", "Atmospheric pressure", _D, 30, 110, "a01006"),
        Metric("turbidity", "NTU", "Turbidity", _W, 0, 4000, "w01003"),
        Metric("free_chlorine", "mg/L", "Free chlorine residual", _W, 0, 20),
        Metric("ph", "pH", "pH", _W, 0, 14, "w01001"),
        Metric("conductivity", "µS/cm", "Electrical conductivity", _W, 0, 200000, "w01014"),
        Metric("water_temperature", "°C", "Water temperature", _W, -5, 60, "w01010"),
        Metric("do", "mg/L", "Dissolved oxygen", _W, 0, 25, "w01009"),
        Metric("cod", "mg/L", "Chemical oxygen demand", _W, 0, 10000, "w01018"),
        Metric("nh3n", "mg/L", "Ammonia nitrogen (NH3-N)", _W, 0, 1000, "w21003"),
        Metric("orp", "mV", "Oxidation-reduction potential", _W, -2000, 2000),
        Metric("flow", "m³/h", "Flow (negative = reverse)", _L, -100000, 100000),
        Metric("pressure", "MPa", "Gauge pressure (negative = below atmospheric)", _L, -0.1, 10),
        Metric("acoustic_level", "dB", "Acoustic noise level on the pipe", _L, 0, 140),
        Metric("totaliser", "m³", "Flow totaliser", _L, 0, 1e12),
    )
}


def metrics_for(kind: DeviceKind) -> list[Metric]:
    return [m for m in METRICS.values() if kind in m.kinds]


# HJ 212 period data (2051 minute, 2061 hour, 2031 day: -Avg/-Min/-Max) is stored as its own
# series, `<metric>.<stat>_<period>` (e.g. `pm10.avg_hour`), so that it can never collide with
# or overwrite the real-time reading of the same metric and instant (the period's DataTime is
# its start). The rules and the readings' hourly rollups see the real-time metrics only.
PERIOD_STATS = ("avg", "min", "max")
PERIODS = ("minute", "hour", "day")


def period_metric(metric: str, stat: str, period: str) -> str:
    return f"{metric}.{stat}_{period}"


def _period_series(m: Metric) -> list[Metric]:
    return [
        Metric(
            period_metric(m.name, stat, period),
            m.unit,
            f"{m.description}, {stat} over the logger's {period} (HJ 212 period data)",
            m.kinds,
            m.low,
            m.high,
            m.hj212,
        )
        for period in PERIODS
        for stat in PERIOD_STATS
    ]


def rtd_metric(metric: str) -> str:
    """Where the real-time values (2011 `-Rtd`) of a device whose rules see its period data
    are stored (`hj212_rules_from` = minute or hour: the period means are its plain metric)."""
    return f"{metric}.rtd"


def _rtd_series(m: Metric) -> Metric:
    return Metric(
        rtd_metric(m.name),
        m.unit,
        f"{m.description}, real-time (HJ 212 2011) of a logger whose rules see its period data",
        m.kinds,
        m.low,
        m.high,
        m.hj212,
    )


# Every storable series: the metrics above and, for those with an HJ 212 code, their periods
# and their real-time series.
SERIES: dict[str, Metric] = {
    **METRICS,
    **{p.name: p for m in METRICS.values() if m.hj212 for p in _period_series(m)},
    **{rtd_metric(m.name): _rtd_series(m) for m in METRICS.values() if m.hj212},
}


class HJ212Deviation(StrEnum):
    """The field deviations from HJ 212 (standards.md §1.11) that the gateway tolerates, as
    recorded on a device (`devices.hj212_deviations`) once it has been seen to send them."""

    lowercase_crc = "lowercase_crc"  # `...&&7d00`
    no_crlf = "no_crlf"  # a frame without its CRLF tail
    length_mismatch = "length_mismatch"  # a declared length that is off, the CRC right
    missing_flag = "missing_flag"  # no Flag (2005 style): version 2005, no answer asked
    flag_key_case = "flag_key_case"  # `FLAG=`
    stray_comma = "stray_comma"  # a `,` around a header field, e.g. before MN
    cp_spaces = "cp_spaces"  # spaces after `&&` or before the closing one
    trailing_separator = "trailing_separator"  # a `;` before the closing `&&`
    doubled_suffix = "doubled_suffix"  # `LA-Rtd-Rtd=71.0`
    gbk_text = "gbk_text"  # a data segment in GBK rather than UTF-8
