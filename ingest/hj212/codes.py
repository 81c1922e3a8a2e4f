"""HJ 212 factor codes -> catalogue metrics, and the series period data is stored as.

Only codes shared/reference/standards.md §1.9 lists are mapped: an unknown code is a dead
letter for that reading, never a guess (§1.11). 2005-style names (`PM10`, `TSP`, ...) are
mapped only where §1.9 names them as seen in public code.
"""

from __future__ import annotations

from monitor.core.catalogue import METRICS, SERIES, period_metric

# 2017 codes, Table B.1 (water) and B.2/B.3 (dust, weather, noise)
CODES: dict[str, str] = {
    "a34001": "tsp",
    "a34002": "pm10",
    "a34004": "pm25",
    "a34005": "pm1",
    # `LA` (A-weighted level) is what real-time dust frames carry; `Leq` (the period's
    # equivalent level) is what noise period data carries. Both are `noise` (LAeq, dB(A)).
    "LA": "noise",
    "Leq": "noise",
    "a01001": "air_temperature",
    "a01002": "humidity",
    "a01006": "air_pressure",
    "a01007": "wind_speed",
    "a01008": "wind_direction",
    "w01001": "ph",
    "w01009": "do",
    "w01010": "water_temperature",
    "w01014": "conductivity",
    "w01018": "cod",
    "w21003": "nh3n",
    # not in Table B.1 but used by several platforms (§1.9, "practice only")
    "w01003": "turbidity",
}

# §1.9: 2005-style names seen in public code ("PM10-Rtd", "PM25-Rtd", "TSP-Rtd", "TEM",
# "RH", "WD", "WS").
ALIASES_2005: dict[str, str] = {
    "PM10": "pm10",
    "PM25": "pm25",
    "TSP": "tsp",
    "TEM": "air_temperature",
    "RH": "humidity",
    "WD": "wind_direction",
    "WS": "wind_speed",
}

# The standard's unit for a34001/a34002/a34004/a34005 is ng/m³ but field devices send µg/m³
# (§1.11); the default here is µg/m³ and a device registered as sending ng/m³ is scaled.
PARTICULATE_CODES = frozenset({"a34001", "a34002", "a34004", "a34005"})

# CN -> period of its data; 2011 (real time) is the catalogue metric itself.
PERIODS: dict[str, str] = {"2051": "minute", "2061": "hour", "2031": "day"}
REALTIME_CN = "2011"
STATS = {"Avg": "avg", "Min": "min", "Max": "max"}


def metric_for(code: str) -> str | None:
    metric = CODES.get(code) or ALIASES_2005.get(code)
    return metric if metric in METRICS else None


def series_for(metric: str, cn: str, suffix: str) -> str | None:
    """The stored metric name of one value: `pm10` for 2011 `-Rtd`, `pm10.avg_hour` for 2061
    `-Avg`; None for a suffix this command does not store."""
    if cn == REALTIME_CN:
        return metric if suffix == "Rtd" else None
    period = PERIODS.get(cn)
    stat = STATS.get(suffix)
    if period is None or stat is None:
        return None
    name = period_metric(metric, stat, period)
    return name if name in SERIES else None
