"""Per-device broker accounts for real: a Mosquitto on its own port runs the password file and
ACL that `write_broker_auth` generates from the registry in PostgreSQL, and the real ingestor
reads from it. A device publishes only as itself and reads nothing, wrong or retired logins
are refused, rotation works through a reload, and the simulator logs in per device."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import Engine, func, select, update

from devices.publisher import FleetPublisher, PublisherError
from devices.simulators import DustMonitor
from ingest.contract import ReadingSet, encode, status_topic, telemetry_topic
from ingest.mqtt import LoginRefused
from ingest.service import Ingestor
from monitor.broker import EmbeddedBroker
from monitor.broker_auth import hash_password, new_password, write_broker_auth
from monitor.core.models import DeadLetter, Device, Reading, table
from monitor.core.settings import Settings
from tests.conftest import free_port, register
from tests.integration.services import wait_for

pytestmark = pytest.mark.integration

PREFIX = "envmon"
INGEST_USER = "envmon-ingest"
# 0x86 bad user name or password, 0x87 not authorised (what Mosquitto 2.0 answers), and
# their MQTT 3.1.1 CONNACK equivalents 4 and 5 as paho reports them.
REFUSED = {0x86, 0x87, 4, 5}
devices = table(Device)
readings = table(Reading)
dead_letters = table(DeadLetter)


@dataclass
class Secured:
    engine: Engine
    db_url: str
    broker: EmbeddedBroker
    auth_dir: Path
    data_dir: Path
    ingest_password: str
    ingest_hash: str
    passwords: dict[str, str]

    def write_auth(self) -> None:
        with self.engine.connect() as conn:
            write_broker_auth(
                conn,
                self.auth_dir,
                prefix=PREFIX,
                ingest_user=INGEST_USER,
                ingest_password_hash=self.ingest_hash,
            )

    def settings(self, password: str | None = None) -> Settings:
        pw = password or self.ingest_password
        return Settings(
            _env_file=None,
            database_url=self.db_url,
            mqtt_url=f"mqtt://{INGEST_USER}:{pw}@127.0.0.1:{self.broker.port}",
            mqtt_topic_prefix=PREFIX,
            mqtt_client_id=f"envmon-ingest-{uuid.uuid4().hex[:8]}",
            data_dir=self.data_dir,
        )


@pytest.fixture
def secured(pg_url: str, pg_engine: Engine, tmp_path: Path) -> Iterator[Secured]:
    """dust-1 and dust-2 active with credentials, dust-3 retired with credentials, dust-4
    active without; the broker runs on the files generated from that."""
    register(
        pg_engine,
        devices={d: "dust_monitor" for d in ("dust-1", "dust-2", "dust-3", "dust-4")},
        rules=False,
    )
    passwords = {d: new_password() for d in ("dust-1", "dust-2", "dust-3")}
    with pg_engine.begin() as conn:
        for device_id, password in passwords.items():
            conn.execute(
                update(devices)
                .where(devices.c.id == device_id)
                .values(mqtt_password_hash=hash_password(password))
            )
        conn.execute(update(devices).where(devices.c.id == "dust-3").values(status="retired"))
    ingest_password = new_password()
    s = Secured(
        engine=pg_engine,
        db_url=pg_url,
        broker=EmbeddedBroker(tmp_path / "broker", free_port()),
        auth_dir=tmp_path / "auth",
        data_dir=tmp_path / "ingest",
        ingest_password=ingest_password,
        ingest_hash=hash_password(ingest_password),
        passwords=passwords,
    )
    s.write_auth()
    s.broker.auth = (s.auth_dir / "passwd", s.auth_dir / "acl")
    s.broker.start()
    yield s
    s.broker.stop()


@pytest.fixture
def ingestor(secured: Secured) -> Iterator[Ingestor]:
    ing = Ingestor(secured.settings(), secured.engine)
    ing.start()
    yield ing
    ing.stop()


class Client:
    """A device's (or anyone's) MQTT connection; PUBACK and SUBACK reason codes are kept."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        *,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{username or 'anon'}-{uuid.uuid4().hex[:6]}",
            protocol=protocol,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: queue.Queue[ReasonCode] = queue.Queue()
        self.disconnects: queue.Queue[ReasonCode] = queue.Queue()
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.received: list[str] = []
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self.connack.put(reason)
        self.client.on_disconnect = lambda _c, _u, _f, reason, _p: self.disconnects.put(reason)
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self.pubacks.__setitem__(
            mid, reason
        )
        self.client.on_subscribe = lambda _c, _u, _mid, reasons, _p: self.subacks.put(reasons)
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.reason = self.connack.get(timeout=10)

    @property
    def refused(self) -> bool:
        return self.reason.is_failure and self.reason.value in REFUSED

    def publish(self, topic: str, payload: bytes | str) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + 10
        while info.mid not in self.pubacks:
            assert time.monotonic() < deadline, f"no PUBACK for {topic}"
            time.sleep(0.01)
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def login(s: Secured, username: str | None, password: str | None) -> Client:
    c = Client(s.broker.port, username, password)
    c.close()
    return c


def reading(ts: datetime, pm10: float) -> bytes:
    return encode(ReadingSet(ts=ts, values={"pm10": pm10}))


def stored(engine: Engine, device_id: str) -> dict[datetime, float]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(readings.c.ts, readings.c.value).where(readings.c.device_id == device_id)
        ).all()
    return {r.ts: r.value for r in rows}


def dead_letter_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(dead_letters)).scalar_one())


def settle(ing: Ingestor, messages: int) -> None:
    wait_for(
        lambda: ing.stats.messages >= messages and ing.writer.idle.is_set(),
        30,
        f"{messages} messages handled",
    )
    time.sleep(0.5)  # anything that was going to arrive besides them has arrived
    assert ing.writer.idle.is_set()


def test_a_device_publishes_only_as_itself_and_the_ingestor_reads_every_device(
    secured: Secured, ingestor: Ingestor
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    t_forged, t_own1, t_own2 = (now - timedelta(minutes=m) for m in (3, 2, 1))
    dust1 = Client(secured.broker.port, "dust-1", secured.passwords["dust-1"])
    dust1_v311 = Client(
        secured.broker.port,
        "dust-1",
        secured.passwords["dust-1"],
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    dust2 = Client(secured.broker.port, "dust-2", secured.passwords["dust-2"])
    assert not dust1.reason.is_failure and not dust2.reason.is_failure
    assert not dust1_v311.reason.is_failure

    # MQTT v5 says so in the PUBACK; MQTT 3.1.1 has no way to, and the broker drops it silently
    forged = dust1.publish(telemetry_topic(PREFIX, "dust-2"), reading(t_forged, 999.0))
    assert forged.is_failure and forged.value == 0x87, forged
    dust1_v311.publish(telemetry_topic(PREFIX, "dust-2"), reading(t_forged, 998.0))
    assert dust1.publish(status_topic(PREFIX, "dust-2"), "offline").is_failure
    # nor anywhere else: below its own id, or outside the device tree
    assert dust1.publish(f"{telemetry_topic(PREFIX, 'dust-1')}/x", reading(t_forged, 1)).is_failure
    assert dust1.publish(f"{PREFIX}/v1/other", "x").is_failure

    assert not dust1.publish(telemetry_topic(PREFIX, "dust-1"), reading(t_own1, 11.0)).is_failure
    assert not dust2.publish(telemetry_topic(PREFIX, "dust-2"), reading(t_own2, 22.0)).is_failure
    assert not dust1.publish(status_topic(PREFIX, "dust-1"), "online").is_failure
    settle(ingestor, 3)

    assert ingestor.stats.messages == 3, "only the devices' own messages reached the ingestor"
    assert stored(secured.engine, "dust-1") == {t_own1: 11.0}
    assert stored(secured.engine, "dust-2") == {t_own2: 22.0}
    assert dead_letter_count(secured.engine) == 0
    with secured.engine.connect() as conn:
        connection = conn.execute(
            select(devices.c.connection).where(devices.c.id == "dust-1")
        ).scalar_one()
    assert connection == "online"
    for c in (dust1, dust1_v311, dust2):
        c.close()


def test_a_device_cannot_read_other_devices_or_its_own_topics(
    secured: Secured, ingestor: Ingestor
) -> None:
    eavesdropper = Client(secured.broker.port, "dust-1", secured.passwords["dust-1"])
    for topic in (
        f"{PREFIX}/v1/devices/+/telemetry",
        telemetry_topic(PREFIX, "dust-2"),
        telemetry_topic(PREFIX, "dust-1"),
        "#",
    ):
        eavesdropper.client.subscribe(topic, qos=1)
        # Mosquitto 2.0.11 grants every subscription (a later release may refuse it, which is
        # as good) and applies the ACL's read rules to each message it would deliver.
        eavesdropper.subacks.get(timeout=10)
    dust2 = Client(secured.broker.port, "dust-2", secured.passwords["dust-2"])
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    assert not dust2.publish(telemetry_topic(PREFIX, "dust-2"), reading(ts, 5.0)).is_failure
    assert not eavesdropper.publish(telemetry_topic(PREFIX, "dust-1"), reading(ts, 6.0)).is_failure
    settle(ingestor, 2)
    assert stored(secured.engine, "dust-2") == {ts: 5.0}  # it was published, and stored
    assert eavesdropper.received == []
    eavesdropper.close()
    dust2.close()


def test_wrong_retired_unknown_and_anonymous_logins_are_refused(secured: Secured) -> None:
    assert not login(secured, "dust-1", secured.passwords["dust-1"]).reason.is_failure
    for username, password in [
        ("dust-1", "not-the-password"),
        ("dust-1", secured.passwords["dust-2"]),  # another device's password
        ("dust-3", secured.passwords["dust-3"]),  # retired: left out of the password file
        ("dust-4", "anything"),  # active, but never given credentials
        ("dust-99", "anything"),  # not registered
        (INGEST_USER, secured.passwords["dust-1"]),
        (None, None),  # anonymous
    ]:
        c = login(secured, username, password)
        assert c.refused, (username, c.reason)
    old = Client(secured.broker.port, "dust-1", "wrong", protocol=MQTTProtocolVersion.MQTTv311)
    old.close()
    assert old.refused and str(old.reason) in ("Not authorized", "Bad user name or password")


def test_the_ingestor_with_a_wrong_password_fails_to_start(secured: Secured) -> None:
    ing = Ingestor(secured.settings(password="not-the-password"), secured.engine)
    try:
        with pytest.raises(LoginRefused):
            ing.start()
    finally:
        ing.stop()


def wait_refused(s: Secured, username: str, password: str) -> None:
    """Until the broker, told to reload, refuses this login (SIGHUP is asynchronous)."""
    wait_for(lambda: login(s, username, password).refused, 10, f"{username} refused")


def test_rotating_and_retiring_take_effect_on_reload_and_cut_off_connected_clients(
    secured: Secured, ingestor: Ingestor
) -> None:
    old = secured.passwords["dust-1"]
    connected = Client(secured.broker.port, "dust-1", old)
    dust2 = Client(secured.broker.port, "dust-2", secured.passwords["dust-2"])
    assert not connected.reason.is_failure and not dust2.reason.is_failure
    new = new_password()
    with secured.engine.begin() as conn:
        conn.execute(
            update(devices)
            .where(devices.c.id == "dust-1")
            .values(mqtt_password_hash=hash_password(new))
        )
        conn.execute(update(devices).where(devices.c.id == "dust-2").values(status="retired"))
    secured.write_auth()
    assert login(secured, "dust-1", old).reason.value == 0, "no effect before the reload"
    secured.broker.reload()

    wait_refused(secured, "dust-1", old)
    wait_refused(secured, "dust-2", secured.passwords["dust-2"])
    # Mosquitto 2.0.11 also drops the connections whose login is no longer valid
    assert connected.disconnects.get(timeout=10) is not None
    assert dust2.disconnects.get(timeout=10) is not None
    connected.close()
    dust2.close()

    rotated = Client(secured.broker.port, "dust-1", new)
    assert not rotated.reason.is_failure
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    assert not rotated.publish(telemetry_topic(PREFIX, "dust-1"), reading(ts, 7.0)).is_failure
    settle(ingestor, 1)
    assert stored(secured.engine, "dust-1") == {ts: 7.0}
    rotated.close()
    # the ingestor's own session was never disturbed
    assert ingestor.intake.fatal is None


def test_fleet_publisher_logs_in_per_device_and_its_backfill_is_stored(
    secured: Secured, ingestor: Ingestor
) -> None:
    sims = [DustMonitor("dust-1", seed=3), DustMonitor("dust-2", seed=3)]
    credentials = {d: secured.passwords[d] for d in ("dust-1", "dust-2")}
    pub = FleetPublisher(
        sims,
        host="127.0.0.1",
        port=secured.broker.port,
        prefix=PREFIX,
        credentials=credentials,
        announce_status=True,
        backfill_s=3 * 3600,
        backfill_step_s=60,
        batch_size=7,
        max_inflight=4,
    )
    with pub:
        pub.backfill(datetime.now(UTC).replace(second=0, microsecond=0))
        assert len(pub._outstanding) <= 4
    assert pub.published == 2 * 26  # 180 stamps in batches of 7, per device
    assert pub.statuses == 4  # online and offline, per device
    settle(ingestor, pub.published + pub.statuses)
    with secured.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(readings)).scalar_one()
        sets: dict[str, int] = dict(
            conn.execute(
                select(readings.c.device_id, func.count(readings.c.ts.distinct())).group_by(
                    readings.c.device_id
                )
            ).all()
        )
    assert sets == {"dust-1": 180, "dust-2": 180}
    with secured.engine.connect() as conn:
        states = dict(
            conn.execute(
                select(devices.c.id, devices.c.connection).where(
                    devices.c.id.in_(["dust-1", "dust-2"])
                )
            ).all()
        )
    assert total == pub.readings
    assert states == {"dust-1": "offline", "dust-2": "offline"}  # said so at close
    assert dead_letter_count(secured.engine) == 0


def test_fleet_publisher_device_connection_leaves_a_last_will(
    secured: Secured, ingestor: Ingestor
) -> None:
    pub = FleetPublisher(
        [DustMonitor("dust-1")],
        host="127.0.0.1",
        port=secured.broker.port,
        prefix=PREFIX,
        credentials={"dust-1": secured.passwords["dust-1"]},
        announce_status=True,
    )
    pub.connect()
    settle(ingestor, 1)

    def connection() -> str | None:
        with secured.engine.connect() as conn:
            value: str | None = conn.execute(
                select(devices.c.connection).where(devices.c.id == "dust-1")
            ).scalar_one()
        return value

    assert connection() == "online"
    # the connection vanishes without a DISCONNECT: the broker publishes the will
    (link,) = pub._links
    link.closing = True
    link.client.loop_stop()
    sock = link.client.socket()
    assert sock is not None
    sock.close()
    wait_for(lambda: connection() == "offline", 30, "the last will stored")


def test_fleet_publisher_with_a_wrong_device_password_is_refused(secured: Secured) -> None:
    pub = FleetPublisher(
        [DustMonitor("dust-1"), DustMonitor("dust-2")],
        host="127.0.0.1",
        port=secured.broker.port,
        prefix=PREFIX,
        credentials={"dust-1": secured.passwords["dust-1"], "dust-2": "wrong"},
        timeout_s=5,
    )
    with pytest.raises(PublisherError, match="refused the connection of dust-2"):
        pub.connect()
    with pytest.raises(ValueError, match="no MQTT credentials"):
        FleetPublisher(
            [DustMonitor("dust-1"), DustMonitor("dust-2")],
            host="127.0.0.1",
            port=secured.broker.port,
            credentials={"dust-1": "x"},
        )
