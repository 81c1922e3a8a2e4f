"""The web map's geometry: GCJ-02 from WGS-84, Web Mercator tiles, the tile setting."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from monitor.core.settings import MapDatum, Settings
from monitor.web import geo
from monitor.web.routes import _tiled_layout, security_headers

# eviltransform's test points (wgs lat, lon -> gcj lat, lon): Shanghai, Shenzhen, Beijing
EVILTRANSFORM = [
    ((31.1774276, 121.5272106), (31.17530398364597, 121.531541859215)),
    ((22.543847, 113.912316), (22.540796131694766, 113.9171764808363)),
    ((39.911954, 116.377817), (39.91334545536069, 116.38404722455657)),
]


@pytest.mark.parametrize(("wgs", "gcj"), EVILTRANSFORM)
def test_wgs84_to_gcj02_matches_the_published_points(
    wgs: tuple[float, float], gcj: tuple[float, float]
) -> None:
    lat, lon = geo.wgs84_to_gcj02(*wgs)
    assert lat == pytest.approx(gcj[0], abs=1e-9) and lon == pytest.approx(gcj[1], abs=1e-9)


def test_gcj02_is_wgs84_outside_china() -> None:
    assert geo.wgs84_to_gcj02(52.52, 13.40) == (52.52, 13.40)  # Berlin


def test_web_mercator_tile_of_beijing() -> None:
    assert geo.world_px(0, 0, 0) == pytest.approx((128, 128))
    x, y = geo.world_px(39.9, 116.39, 10)
    assert (int(x // 256), int(y // 256)) == (843, 388)


SITES = [
    SimpleNamespace(id="cs-1", name="a", district="Lanshan", latitude=35.05, longitude=118.33),
    SimpleNamespace(id="cs-2", name="b", district="Lanshan", latitude=35.11, longitude=118.41),
]


@pytest.mark.parametrize("datum", list(MapDatum))
def test_sites_sit_on_the_tiles_where_the_tiles_datum_puts_them(datum: MapDatum) -> None:
    settings = Settings(map_tiles="https://tiles.example.cn/{z}/{x}/{y}.png", map_tiles_datum=datum)
    layout = _tiled_layout(SITES, {"cs-1": 2}, settings)
    assert [p["worst"] for p in layout["points"]] == ["alarm", "none"]
    for site, point in zip(SITES, layout["points"], strict=True):
        assert 40 <= point["x"] <= 960 and 40 <= point["y"] <= 660  # inside the padding
        (tile,) = [
            t
            for t in layout["tiles"]
            if t.x <= point["x"] < t.x + 256 and t.y <= point["y"] < t.y + 256
        ]
        z, tx, ty = map(int, re.findall(r"\d+", tile.href))
        where = (site.latitude, site.longitude)
        if datum == MapDatum.gcj02:
            where = geo.wgs84_to_gcj02(*where)
        expected = geo.world_px(*where, z)
        assert tx * 256 + point["x"] - tile.x == pytest.approx(expected[0], abs=1e-6)
        assert ty * 256 + point["y"] - tile.y == pytest.approx(expected[1], abs=1e-6)
    # the tiles cover the whole box
    assert min(t.x for t in layout["tiles"]) <= 0 and min(t.y for t in layout["tiles"]) <= 0
    assert max(t.x for t in layout["tiles"]) + 256 >= 1000
    assert max(t.y for t in layout["tiles"]) + 256 >= 700


def test_gcj02_moves_a_site_by_hundreds_of_metres() -> None:
    lat, lon = geo.wgs84_to_gcj02(35.05, 118.33)
    metres = math.hypot((lat - 35.05) * 111_320, (lon - 118.33) * 111_320 * math.cos(0.6117))
    assert 100 < metres < 1000


def test_tile_setting_is_checked_and_only_its_host_is_allowed() -> None:
    assert "img-src 'self' data:;" in security_headers(Settings())["Content-Security-Policy"]
    tiled = Settings(map_tiles="https://t0.tiles.example.cn:8443/maps/{z}/{x}/{y}.png?k=1")
    csp = security_headers(tiled)["Content-Security-Policy"]
    assert "img-src 'self' data: https://t0.tiles.example.cn:8443;" in csp
    assert "default-src 'self';" in csp  # scripts, styles and fetches stay on this server
    bad_ones = (
        "tiles.example.cn/{z}/{x}/{y}",
        "ftp://x/{z}/{x}/{y}",
        "https://x/{z}/{x}",
        "https://x;script-src*/{z}/{x}/{y}",  # would write into the CSP header
        "https://user:pw@x/{z}/{x}/{y}",
        "https://x:port/{z}/{x}/{y}",
    )
    for good in ("http://127.0.0.1:8080/{z}/{x}/{y}.png", "https://[::1]/{z}/{x}/{y}"):
        assert Settings(map_tiles=good).map_tiles == good
    for bad in bad_ones:
        with pytest.raises(ValidationError):
            Settings(map_tiles=bad)
