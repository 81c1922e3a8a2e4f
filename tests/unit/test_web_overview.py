"""The overview's device health says what the devices API says, device by device."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from monitor.api.routes import devices as device_routes
from monitor.auth import Principal
from monitor.core.db import make_engine, make_sessionmaker, upgrade
from monitor.core.models import Device, Role, Site, table
from monitor.core.settings import Settings
from monitor.web import routes


def test_offline_and_stalest_devices_follow_the_api_online_rule(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'envmon.db'}"
    upgrade(url)
    engine = make_engine(url)
    now = datetime.now(UTC)
    minutes = timedelta(minutes=1)
    # (last seen, reporting interval s, connection): the API's rule is unseen, disconnected,
    # or unseen longer than max(ENVMON_OFFLINE_AFTER_S, 6 intervals)
    fleet = [
        (None, 60, None),
        (now, 60, None),
        (now - 20 * minutes, 60, None),  # 20 min > 10 min: offline
        (now - 20 * minutes, 600, None),  # 20 min < 60 min: online
        (now, 60, "offline"),  # its last will said so
        (now - 9 * minutes, 60, "online"),
    ]
    with engine.begin() as conn:
        for district in ("Lanshan", "Hedong"):
            conn.execute(
                insert(table(Site)).values(
                    id=district, name=district, district=district, kind="construction_site"
                )
            )
        for i, (seen, interval_s, connection) in enumerate(fleet):
            for district in ("Lanshan", "Hedong"):
                conn.execute(
                    insert(table(Device)).values(
                        id=f"{district}-{i}",
                        site_id=district,
                        kind="dust_monitor",
                        last_seen_at=seen,
                        interval_s=interval_s,
                        connection=connection,
                    )
                )
    settings = Settings(database_url=url)
    inspector = Principal(1, "li.ming", Role.inspector, "Lanshan", 1)
    city = Principal(2, "wang.fang", Role.inspector, None, 2)
    with make_sessionmaker(engine)() as session:
        health = routes._device_health(session, settings, inspector)
        everywhere = routes._device_health(session, settings, city)
        api = {
            r.id: device_routes._read(r, settings.offline_after_s).online
            for r in session.execute(device_routes._select(inspector))
        }
    engine.dispose()
    assert len(api) == health["device_count"] == len(fleet)  # Lanshan's only
    assert {d["id"]: d["online"] for d in health["devices"]} == api
    assert health["offline_count"] == 3
    assert [d["id"] for d in health["offline"]] == ["Lanshan-0", "Lanshan-2", "Lanshan-4"]
    assert health["devices"][0]["id"] == "Lanshan-0"  # never seen comes first
    # city-wide: both districts, counted without the sites
    assert everywhere["device_count"] == 2 * len(fleet)
    assert everywhere["offline_count"] == 6
    assert {d["district"] for d in everywhere["offline"]} == {"Lanshan", "Hedong"}
