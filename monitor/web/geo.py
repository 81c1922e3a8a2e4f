"""Where the map draws a site: Web Mercator tile arithmetic, and WGS-84 -> GCJ-02 for the
Chinese tile providers whose maps are drawn in GCJ-02 (AMap, Tencent).

Devices and sites are registered in WGS-84 (GNSS). GCJ-02 is WGS-84 with a deliberate,
position-dependent offset of a few hundred metres inside China; its forward formula is
public (the one below; eviltransform's test points pin it), its inverse has no closed form.
So envmon converts the site, never the tiles: with `ENVMON_MAP_TILES_DATUM=gcj02` each site is
moved into GCJ-02 before it is placed on the tiles. Outside China GCJ-02 equals WGS-84.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TILE = 256
_A = 6378245.0  # Krasovsky 1940 semi-major axis, as the GCJ-02 formula uses it
_EE = 0.00669342162296594323


def out_of_china(lat: float, lon: float) -> bool:
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _dlat(x: float, y: float) -> float:
    r = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    r += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    r += (160.0 * math.sin(y / 12.0 * math.pi) + 320 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    return r


def _dlon(x: float, y: float) -> float:
    r = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    r += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    r += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    return r


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    """(lat, lon) in WGS-84 -> GCJ-02 (unchanged outside China)."""
    if out_of_china(lat, lon):
        return lat, lon
    dlat = _dlat(lon - 105.0, lat - 35.0)
    dlon = _dlon(lon - 105.0, lat - 35.0)
    rad = lat / 180.0 * math.pi
    magic = 1 - _EE * math.sin(rad) ** 2
    root = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1 - _EE)) / (magic * root) * math.pi)
    dlon = (dlon * 180.0) / (_A / root * math.cos(rad) * math.pi)
    return lat + dlat, lon + dlon


def world_px(lat: float, lon: float, zoom: int) -> tuple[float, float]:
    """Web Mercator pixel of a point at a zoom level (the XYZ tile scheme, 256 px tiles)."""
    size = TILE * 2**zoom
    lat = max(min(lat, 85.05112878), -85.05112878)
    s = math.sin(math.radians(lat))
    x = (lon + 180.0) / 360.0 * size
    y = (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * size
    return x, y


@dataclass(frozen=True, slots=True)
class Tile:
    x: float  # where the tile's top-left corner is in the map's box
    y: float
    href: str


@dataclass(frozen=True, slots=True)
class View:
    zoom: int
    left: float  # world pixel of the box's top-left corner at that zoom
    top: float

    def place(self, lat: float, lon: float) -> tuple[float, float]:
        x, y = world_px(lat, lon, self.zoom)
        return x - self.left, y - self.top


def fit(points: list[tuple[float, float]], width: int, height: int, pad: int) -> View:
    """The deepest zoom (at most 17) at which every point fits in the box inside `pad`,
    centred on them."""
    for zoom in range(17, -1, -1):
        xs, ys = zip(*(world_px(lat, lon, zoom) for lat, lon in points), strict=True)
        if max(xs) - min(xs) <= width - 2 * pad and max(ys) - min(ys) <= height - 2 * pad:
            break
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return View(zoom, cx - width / 2, cy - height / 2)


def tiles(view: View, template: str, width: int, height: int) -> list[Tile]:
    """The tiles that cover the box: `{z}`, `{x}`, `{y}` of the template filled in."""
    count = 2**view.zoom
    out = []
    for ty in range(math.floor(view.top / TILE), math.floor((view.top + height) / TILE) + 1):
        if not 0 <= ty < count:
            continue
        for tx in range(math.floor(view.left / TILE), math.floor((view.left + width) / TILE) + 1):
            href = (
                template.replace("{z}", str(view.zoom))
                .replace("{x}", str(tx % count))
                .replace("{y}", str(ty))
            )
            out.append(Tile(tx * TILE - view.left, ty * TILE - view.top, href))
    return out
