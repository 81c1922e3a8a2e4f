from __future__ import annotations

from monitor.core.catalogue import METRICS, DeviceKind, metrics_for


def test_every_metric_has_a_unit_a_range_and_a_kind() -> None:
    for m in METRICS.values():
        assert m.unit and m.low < m.high and m.kinds, m.name


def test_each_kind_measures_what_the_design_lists() -> None:
    names = {k: {m.name for m in metrics_for(k)} for k in DeviceKind}
    assert {"pm25", "pm10", "tsp", "noise", "wind_speed"} <= names[DeviceKind.dust_monitor]
    assert {"turbidity", "free_chlorine", "ph", "conductivity", "do", "cod", "nh3n", "orp"} <= (
        names[DeviceKind.water_quality]
    )
    assert {"flow", "pressure", "acoustic_level"} <= names[DeviceKind.leak_meter]


def test_units_are_fixed_per_metric() -> None:
    assert METRICS["pm10"].unit == "µg/m³"
    assert METRICS["turbidity"].unit == "NTU"
    assert METRICS["pressure"].unit == "MPa"
    assert METRICS["pressure"].in_range(-0.05) and not METRICS["pressure"].in_range(12)
