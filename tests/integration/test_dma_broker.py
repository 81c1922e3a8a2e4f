"""A synthetic DMA through the real broker: simulated leak meters publish a day over MQTT, the
ingestor stores it, recomputes the DMA's day in the batches' transactions and judges the
DMA's rules, whose alert is about the site."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, select

from alerts.packs import install_default_rules
from devices.publisher import FleetPublisher
from devices.simulators import LeakMeter
from ingest.service import Ingestor
from monitor.core.models import Alert, DmaDay, Rule, table
from monitor.core.settings import MqttEndpoint, Settings
from monitor.registry import DeviceCreate, SiteCreate, upsert_device, upsert_site
from tests.integration.test_pipeline import wait_until_idle

TZ = ZoneInfo("Asia/Shanghai")
CONNECTIONS = 800  # × 1.7 L/h = 1.36 m³/h legitimate night use
LEAK = 6.0  # m³/h: 7.5 L/conn/h, over the 6 L/conn/h warning of dma-net-night-flow
THROUGH = 2.0  # m³/h passed on to the next DMA through the outlet meter


@pytest.fixture
def running(pg_url: str, pg_engine: Engine, mqtt_url: str, prefix: str) -> Iterator[Ingestor]:
    with pg_engine.begin() as conn:
        install_default_rules(conn)
        upsert_site(
            conn,
            SiteCreate(id="dma-b", name="DMA B", district="Lanshan", kind="dma", connections=800),
        )
        for dev, role in (("lm-in", "inlet"), ("lm-out", "outlet")):
            upsert_device(
                conn,
                DeviceCreate(
                    id=dev, site_id="dma-b", kind="leak_meter", interval_s=300, dma_role=role
                ),
            )
    settings = Settings(
        database_url=pg_url, mqtt_url=mqtt_url, mqtt_topic_prefix=prefix, mqtt_client_id=prefix
    )
    ingestor = Ingestor(settings, pg_engine)
    ingestor.start()
    yield ingestor
    ingestor.stop()


def test_a_day_over_mqtt_gives_the_dma_figures_and_a_site_alert(
    running: Ingestor, pg_engine: Engine, mqtt_url: str, prefix: str
) -> None:
    day = datetime.now(TZ).date() - timedelta(days=2)
    end = datetime.combine(day + timedelta(days=1), time(1), tzinfo=TZ).astimezone(UTC)
    # the inlet carries the DMA's customers, its leak and the water passed on; the outlet
    # meter measures what is passed on (a constant: no customers of its own, no night floor)
    inlet = LeakMeter("lm-in", seed=3, night_use_m3h=1.36, leak_m3h=LEAK + THROUGH)
    outlet = LeakMeter("lm-out", seed=4, night_use_m3h=0.0, leak_m3h=THROUGH)
    outlet._mean_flow = 0.0  # nothing but the through flow
    broker = MqttEndpoint(mqtt_url)
    pub = FleetPublisher(
        [inlet, outlet],
        host=broker.host,
        port=broker.port,
        prefix=prefix,
        backfill_s=26 * 3600,
        backfill_step_s=300,
        batch_size=36,
    )
    pub.connect()
    pub.backfill(end)
    pub.close()
    wait_until_idle(running, pub.published, timeout_s=60)

    dd = table(DmaDay)
    with pg_engine.connect() as conn:
        fig = conn.execute(select(dd).where(dd.c.site_id == "dma-b", dd.c.day == day)).one()
    n_slots = len(fig.slot_index)  # the day's defined slots (local midnight to midnight)
    assert fig.valid and fig.coverage == 1.0
    # truth: night use 1.36 + leak 6.0 = 7.36 m³/h; net night flow 6.0; NDF 24 (no AZP meter)
    assert fig.mnf_m3h == pytest.approx(1.36 + LEAK, rel=0.02)
    assert fig.net_night_flow_m3h == pytest.approx(LEAK, rel=0.02)
    assert fig.leakage_m3 == pytest.approx(24 * LEAK, rel=0.02)
    assert n_slots == 96  # every slot of the day has a net inflow (inlet − outlet)

    alerts, rules = table(Alert), table(Rule)
    with pg_engine.connect() as conn:
        found = conn.execute(
            select(alerts.c.device_id, alerts.c.site_id, alerts.c.severity, alerts.c.peak_value)
            .join(rules, rules.c.id == alerts.c.rule_id)
            .where(rules.c.name == "dma-net-night-flow")
        ).all()
    assert [(a.device_id, a.site_id, a.severity) for a in found] == [(None, "dma-b", "warning")]
    assert found[0].peak_value == pytest.approx(1000 * LEAK / CONNECTIONS, rel=0.02)
