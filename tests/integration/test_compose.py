"""The production deployment, checked without Docker: docker-compose.yml against the code it
starts (CLI verbs, settings, the health route), and the shipped Mosquitto config run for real
on a local `mosquitto` with its password file and ACL."""

from __future__ import annotations

import contextlib
import getpass
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy.engine import make_url

from ingest.mqtt import LoginRefused, Message, MqttIntake
from monitor.broker import find_mosquitto, port_open
from monitor.cli import main
from monitor.core.settings import Settings
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO_DIR = ROOT / "deploy" / "mosquitto"
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
ENVMON_SERVICES = ("migrate", "ingest", "hj212", "api")
PREFIX = Settings.model_config["env_prefix"]
SETTING_VARIABLES = {PREFIX + name.upper() for name in Settings.model_fields}

# $$ is a literal $; ${NAME}, ${NAME:-default}, ${NAME:?error} and friends are substituted.
INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """What docker compose makes of a value in the file, given the variables of `.env`."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op") or "", m.group("arg") or ""
        value = env.get(name)
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("?") and missing:
            raise KeyError(f"{name}: {arg}")
        if op.endswith("-") and missing:
            return arg
        return value or ""

    return INTERPOLATION.sub(one, text)


def compose_variables() -> set[str]:
    text = (ROOT / "docker-compose.yml").read_text()
    return {m.group("name") for m in INTERPOLATION.finditer(text) if m.group("name")}


def conf_directives(path: Path) -> dict[str, list[str]]:
    """Directive -> values of every active (uncommented) line of a Mosquitto config."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            found.setdefault(key, []).append(value.strip())
    return found


def command_args(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def volume_mounts(service: str) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each short-syntax volume of a service."""
    mounts = []
    for entry in SERVICES[service].get("volumes", []):
        source, target, *mode = entry.split(":")
        mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


# --- the compose file against the code ---------------------------------------------------------


def test_compose_file_has_the_six_services_and_no_version_key() -> None:
    assert "version" not in COMPOSE
    assert set(SERVICES) == {"timescaledb", "mosquitto", "migrate", "ingest", "hj212", "api"}
    top = {k for k in COMPOSE if not k.startswith("x-")}
    assert top <= {"name", "services", "volumes", "networks", "configs", "secrets"}


def test_every_envmon_service_runs_a_verb_that_envmon_lists_with_valid_options() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:", 1)[1]
    verbs = set(re.findall(r"^  (\S+)", listed, re.MULTILINE))
    assert {"migrate", "ingest", "api"} <= verbs
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["envmon"\]$', dockerfile, re.MULTILINE)
    for name in ENVMON_SERVICES:
        service = SERVICES[name]
        assert service["build"] == ".", f"{name} must run the image of ./Dockerfile"
        verb, *options = command_args(name)
        assert verb in verbs, f"{name}: `envmon {verb}` is not a command of envmon"
        # Parses the options as the container would, without running the command.
        main.commands[verb].make_context(verb, options)


def container_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a service's container reads from the environment compose gives it."""
    env_file = {"POSTGRES_PASSWORD": "pg-secret", "ENVMON_INGEST_MQTT_PASSWORD": "mq-secret"}
    for name in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in SERVICES[service]["environment"].items():
        monkeypatch.setenv(name, interpolate(str(value), env_file))
    return Settings(_env_file=None)


def test_envmon_variables_in_compose_are_settings_and_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pg = SERVICES["timescaledb"]["environment"]
    for name in ENVMON_SERVICES:
        environment = SERVICES[name]["environment"]
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        unknown = {k for k in environment if k.startswith(PREFIX)} - SETTING_VARIABLES
        assert not unknown, f"{name} sets {unknown}, which no Settings field reads"
        with monkeypatch.context() as env:
            settings = container_settings(name, env)
        assert settings.env == "production"
        assert settings.log_format == "json"
        db = make_url(settings.sqlalchemy_url)
        assert (db.host, db.port, db.password) == ("timescaledb", 5432, "pg-secret")
        assert (db.username, db.database) == (pg["POSTGRES_USER"], pg["POSTGRES_DB"])
    ingest = container_settings("ingest", monkeypatch)
    assert not ingest.embedded_broker
    endpoint = ingest.mqtt
    assert (endpoint.host, endpoint.port, endpoint.tls) == ("mosquitto", 8883, True)
    assert str(ingest.mqtt_ca_file) == "/etc/envmon/mqtt-ca/ca.crt"
    assert (endpoint.username, endpoint.password) == ("envmon-ingest", "mq-secret")


def test_services_start_in_order_behind_health_checks() -> None:
    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in SERVICES[name]["depends_on"].items()}

    assert conditions("migrate") == {"timescaledb": "service_healthy"}
    assert conditions("ingest") == {
        "migrate": "service_completed_successfully",
        "mosquitto": "service_healthy",
    }
    assert conditions("api") == {"migrate": "service_completed_successfully"}
    assert conditions("hj212") == {"migrate": "service_completed_successfully"}
    for name in ("timescaledb", "mosquitto", "hj212", "api"):
        assert SERVICES[name]["healthcheck"]["test"][0] == "CMD", name
    assert SERVICES["migrate"]["restart"] == "no"
    for name in ("timescaledb", "mosquitto", "ingest", "hj212", "api"):
        assert SERVICES[name]["restart"] == "unless-stopped", name
    pg = SERVICES["timescaledb"]["environment"]
    check = SERVICES["timescaledb"]["healthcheck"]["test"]
    assert check[1] == "pg_isready"
    assert check[check.index("-U") + 1] == pg["POSTGRES_USER"]
    assert check[check.index("-d") + 1] == pg["POSTGRES_DB"]


def test_volumes_are_declared_and_bind_mounts_exist() -> None:
    declared = set(COMPOSE["volumes"])
    used = set()
    for name in SERVICES:
        for source, target, mode in volume_mounts(name):
            assert target.startswith("/") and mode in ("ro", "rw"), (name, target, mode)
            if source.startswith("./deploy/mosquitto/certs/"):
                # made on the host by make-certs.sh, never committed: the script must be there
                assert (ROOT / "deploy/mosquitto/make-certs.sh").exists()
            elif source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
            else:
                assert source in declared, f"{name} uses volume {source}, not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"


def test_mosquitto_mounts_the_shipped_config_where_it_points() -> None:
    mounts = {target: (source, mode) for source, target, mode in volume_mounts("mosquitto")}
    source, mode = mounts["/mosquitto/config"]
    assert mode == "ro"
    config_dir = ROOT / source
    # eclipse-mosquitto's default command: mosquitto -c /mosquitto/config/mosquitto.conf
    conf = conf_directives(config_dir / "mosquitto.conf")
    assert conf["allow_anonymous"] == ["false"]
    assert conf["persistence"] == ["true"]
    assert int(conf["max_queued_messages"][0]) > 1000, "Mosquitto's default drops messages"
    for key in ("password_file", "acl_file"):
        (path,) = conf[key]
        assert path.startswith("/mosquitto/config/"), f"{key} {path} is outside the mount"
    assert (config_dir / Path(conf["acl_file"][0]).name).is_file()
    (store,) = conf["persistence_location"]
    volumes = [t for t, (s, _) in mounts.items() if not s.startswith((".", "/"))]
    assert any(store.startswith(t.rstrip("/") + "/") for t in volumes), (
        f"persistence_location {store} is not on a named volume"
    )


def test_ingest_spool_is_on_a_volume() -> None:
    data_dir = SERVICES["ingest"]["environment"]["ENVMON_DATA_DIR"]
    assert data_dir in {target for _, target, _ in volume_mounts("ingest")}


def test_env_example_lists_what_compose_needs_and_every_setting_with_its_default() -> None:
    assigned: dict[str, str] = {}
    documented: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            target = documented if m.group(1) else assigned
            target[m.group(2)] = m.group(3).strip().strip('"')
    needed = compose_variables()
    assert needed <= set(assigned), f"missing from .env.example: {needed - set(assigned)}"
    envmon_names = {n for n in {*assigned, *documented} if n.startswith(PREFIX)}
    assert envmon_names - SETTING_VARIABLES <= needed, "an ENVMON_ name that nothing reads"
    for name, field in Settings.model_fields.items():
        variable = PREFIX + name.upper()
        assert variable in documented, f"{variable} is missing from .env.example"
        default = getattr(field.default, "value", field.default)
        shown = "" if default is None else str(default)
        assert documented[variable] == shown, f"{variable}: .env.example says another default"


def test_image_build_leaves_out_secrets_and_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", "data"} <= ignored
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    user = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert user and user[-1] not in ("root", "0")


def test_api_healthcheck_passes_on_a_running_api_and_fails_without_one(tmp_path: Path) -> None:
    verb, *options = command_args("api")
    port_in_container = options[options.index("--port") + 1]
    published = {p.rsplit(":", 1)[1] for p in SERVICES["api"]["ports"]}
    assert published == {port_in_container}
    check = SERVICES["api"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    url = f"http://127.0.0.1:{port_in_container}/v1/health"
    assert url in check[3]

    port = free_port()
    code = check[3].replace(url, f"http://127.0.0.1:{port}/v1/health")
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env["ENVMON_DATABASE_URL"] = f"sqlite:///{tmp_path / 'envmon.db'}"
    envmon = str(Path(sys.executable).with_name("envmon"))
    subprocess.run([envmon, "migrate"], env=env, cwd=tmp_path, check=True, capture_output=True)
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        api = subprocess.Popen(
            [envmon, verb, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            assert api.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        ok = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=10)
        assert ok.returncode == 0, ok.stderr.decode()
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(15)
    down = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=10)
    assert down.returncode != 0


# --- the shipped broker config, run for real ---------------------------------------------------

PASSWORDS = {"envmon-ingest": "ingest-pw", "dust-001": "dust-001-pw", "dust-002": "dust-002-pw"}


class Broker:
    """mosquitto on a copy of deploy/mosquitto/mosquitto.conf whose port and paths are local."""

    def __init__(self, tmp: Path) -> None:
        binary = find_mosquitto()
        passwd = shutil.which("mosquitto_passwd")
        if binary is None or passwd is None:
            pytest.fail("mosquitto and mosquitto_passwd are needed (Debian: mosquitto)")
        self.binary = binary
        self.port = free_port()
        self.log = tmp / "mosquitto.log"
        self.conf = tmp / "mosquitto.conf"
        (tmp / "data").mkdir()
        shutil.copy(MOSQUITTO_DIR / "acl", tmp / "acl")
        # the TLS listener, with certificates from the shipped script
        self.tls_port = free_port()
        self.certs = tmp / "certs"
        subprocess.run(
            ["sh", str(MOSQUITTO_DIR / "make-certs.sh"), str(self.certs), "localhost"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        local = {
            "cafile": str(self.certs / "ca.crt"),
            "certfile": str(self.certs / "server.crt"),
            "keyfile": str(self.certs / "server.key"),
            "persistence_location": f"{tmp / 'data'}/",
            "password_file": str(tmp / "passwd"),
            "acl_file": str(tmp / "acl"),
            "log_dest": f"file {self.log}",
            # as root, mosquitto would switch to the `mosquitto` user, who cannot write here
            "user": getpass.getuser(),
        }
        listeners = {"1883": f"{self.port} 127.0.0.1", "8883": f"{self.tls_port} 127.0.0.1"}
        lines, replaced = [], set()
        for line in (MOSQUITTO_DIR / "mosquitto.conf").read_text().splitlines():
            key = line.split(" ", 1)[0]
            if key == "listener":
                port = line.split()[1]
                assert port in listeners, f"unexpected listener {line!r}"
                lines.append(f"listener {listeners.pop(port)}")
                continue
            if key in local:
                assert key not in replaced, f"{key} appears twice in mosquitto.conf"
                line = f"{key} {local[key]}"
                replaced.add(key)
            lines.append(line)
        assert replaced >= set(local) - {"user"}, f"not in the config: {set(local) - replaced}"
        assert not listeners, f"listeners missing from the config: {listeners}"
        if "user" not in replaced:
            lines.append(f"user {local['user']}")
        self.conf.write_text("\n".join(lines) + "\n")
        for i, (user, password) in enumerate(PASSWORDS.items()):
            create = ["-c"] if i == 0 else []
            subprocess.run([passwd, "-b", *create, str(tmp / "passwd"), user, password], check=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                pytest.fail(f"mosquitto did not start on the shipped config:\n{err}\n{log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its in-memory store to the persistence location."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def url(self, user: str, password: str | None = None) -> str:
        return f"mqtt://{user}:{password or PASSWORDS[user]}@127.0.0.1:{self.port}"


@pytest.fixture
def broker(tmp_path: Path, request: pytest.FixtureRequest) -> Broker:
    b = Broker(tmp_path)
    request.addfinalizer(b.stop)
    b.start()
    return b


class Intake:
    """The ingestor's own MQTT client (v5, persistent session, manual acks) on the broker."""

    def __init__(self, url: str, client_id: str) -> None:
        settings = Settings(_env_file=None, mqtt_url=url, mqtt_client_id=client_id)
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.mqtt = MqttIntake(settings, self.inbox)

    def __enter__(self) -> Intake:
        self.mqtt.start(timeout_s=10)
        return self

    def __exit__(self, *_: object) -> None:
        self.mqtt.close()

    def take(self, count: int, timeout_s: float = 10) -> list[Message]:
        got: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            try:
                got.append(self.inbox.get(timeout=0.1))
            except queue.Empty:
                continue
        self.mqtt.ack(got)
        return got


class Device:
    """A device's MQTT v5 connection; PUBACK reason codes tell what the broker allowed."""

    def __init__(self, port: int, username: str | None, password: str | None = None) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{username or 'anon'}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password or PASSWORDS[username])
        self.connack: queue.Queue[ReasonCode] = queue.Queue()
        self.pubacks: dict[int, ReasonCode] = {}
        self.received: list[str] = []
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self.connack.put(reason)
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self.pubacks.__setitem__(
            mid, reason
        )
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.reason = self.connack.get(timeout=10)

    def publish(self, topic: str, payload: str) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + 10
        while info.mid not in self.pubacks:
            assert time.monotonic() < deadline, f"no PUBACK for {topic}"
            time.sleep(0.01)
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_broker_refuses_anonymous_and_wrong_passwords(broker: Broker) -> None:
    anonymous = Device(broker.port, None)
    assert anonymous.reason.is_failure
    anonymous.close()
    wrong = Device(broker.port, "dust-001", "not-the-password")
    assert wrong.reason.is_failure
    wrong.close()
    refused = Intake(broker.url("envmon-ingest", "not-the-password"), "envmon-ingest-x")
    with pytest.raises(LoginRefused):
        refused.mqtt.start(timeout_s=5)
    refused.mqtt.close()


def test_a_device_publishes_only_under_its_own_id_and_reads_nothing(broker: Broker) -> None:
    eavesdropper = Device(broker.port, "dust-002")
    assert not eavesdropper.reason.is_failure
    eavesdropper.client.subscribe("envmon/v1/devices/+/telemetry", qos=1)
    device = Device(broker.port, "dust-001")
    assert not device.reason.is_failure
    with Intake(broker.url("envmon-ingest"), f"envmon-ingest-{uuid.uuid4().hex[:6]}") as ingest:
        # Both channels the ingestor subscribes to, in the order the broker delivers them.
        assert device.publish("envmon/v1/devices/dust-002/telemetry", "{}").is_failure
        assert not device.publish("envmon/v1/devices/dust-001/telemetry", "{}").is_failure
        assert not device.publish("envmon/v1/devices/dust-001/status", "{}").is_failure
        got = ingest.take(2)
        time.sleep(0.3)
        got += ingest.take(1, timeout_s=0.3)
    assert [m.topic for m in got] == [
        "envmon/v1/devices/dust-001/telemetry",
        "envmon/v1/devices/dust-001/status",
    ]
    assert eavesdropper.received == []
    device.close()
    eavesdropper.close()


def test_a_backlog_beyond_mosquittos_default_queue_survives_a_broker_restart(
    broker: Broker,
) -> None:
    # Mosquitto's default max_queued_messages (1000) would keep only the first 1000.
    count = 1500
    client_id = f"envmon-ingest-{uuid.uuid4().hex[:6]}"
    with Intake(broker.url("envmon-ingest"), client_id):
        pass  # the session and its subscriptions now wait on the broker
    device = Device(broker.port, "dust-001")
    infos = [
        device.client.publish("envmon/v1/devices/dust-001/telemetry", str(i), qos=1)
        for i in range(count)
    ]
    for info in infos:
        info.wait_for_publish(10)
    device.close()
    broker.stop()
    broker.start()
    with Intake(broker.url("envmon-ingest"), client_id) as ingest:
        got = ingest.take(count, timeout_s=20)
    assert sorted(int(m.payload) for m in got) == list(range(count))


def test_mosquitto_healthcheck_logs_in_as_the_ingestor(broker: Broker) -> None:
    check = SERVICES["mosquitto"]["healthcheck"]["test"]
    assert check[:2] == ["CMD", "mosquitto_sub"]
    mosquitto_sub = shutil.which("mosquitto_sub")
    assert mosquitto_sub, "mosquitto_sub is needed (Debian: mosquitto-clients)"

    def run(password: str) -> int:
        argv = [interpolate(a, {"ENVMON_INGEST_MQTT_PASSWORD": password}) for a in check[1:]]
        argv[0] = mosquitto_sub
        argv[argv.index("-p") + 1] = str(broker.port)
        return subprocess.run(argv, capture_output=True, timeout=20).returncode

    assert run(PASSWORDS["envmon-ingest"]) == 0
    assert run("not-the-password") != 0


def test_the_ingestor_reads_over_tls_with_the_ca_and_plain_mqtt_is_refused_there(
    broker: Broker,
) -> None:
    """The compose ingestor's path: mqtts:// to the TLS listener, trusting the CA that
    make-certs.sh made (ENVMON_MQTT_CA_FILE)."""
    tls_url = f"mqtts://envmon-ingest:{PASSWORDS['envmon-ingest']}@localhost:{broker.tls_port}"
    settings = Settings(
        _env_file=None,
        mqtt_url=tls_url,
        mqtt_ca_file=broker.certs / "ca.crt",
        mqtt_client_id=f"envmon-ingest-{uuid.uuid4().hex[:6]}",
    )
    inbox: queue.Queue[Message] = queue.Queue()
    intake = MqttIntake(settings, inbox)
    intake.start(timeout_s=10)
    try:
        device = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        device.username_pw_set("dust-001", PASSWORDS["dust-001"])
        device.tls_set(ca_certs=str(broker.certs / "ca.crt"))
        device.connect("localhost", broker.tls_port)
        device.loop_start()
        device.publish("envmon/v1/devices/dust-001/telemetry", "{}", qos=1).wait_for_publish(10)
        got = inbox.get(timeout=10)
        assert got.topic == "envmon/v1/devices/dust-001/telemetry"
        intake.ack([got])
        device.loop_stop()
        device.disconnect()
    finally:
        intake.close()

    # without the CA (the system trust store does not know it) the TLS handshake fails
    untrusted = MqttIntake(
        Settings(_env_file=None, mqtt_url=tls_url, mqtt_client_id="untrusted"), queue.Queue()
    )
    with pytest.raises((ConnectionError, OSError)):
        untrusted.start(timeout_s=3)
    # and plain MQTT on the TLS port gets nowhere
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    plain.username_pw_set("dust-001", PASSWORDS["dust-001"])
    connected = threading.Event()
    plain.on_connect = lambda *_: connected.set()
    with contextlib.suppress(OSError):
        plain.connect("localhost", broker.tls_port)
        plain.loop_start()
        assert not connected.wait(2)
        plain.loop_stop()


def test_hj212_port_is_published_on_a_chosen_address_with_the_security_caveat() -> None:
    (published,) = SERVICES["hj212"]["ports"]
    env = {"HJ212_BIND": "10.8.0.1", "HJ212_PORT": "8212"}
    assert interpolate(published, env) == "10.8.0.1:8212:8212"
    assert interpolate(published, {}) == "127.0.0.1:8212:8212"  # loopback unless chosen
    environment = SERVICES["hj212"]["environment"]
    assert environment["ENVMON_HJ212_PORT"] == "8212"
    assert Settings(hj212_host=environment["ENVMON_HJ212_HOST"]).hj212_port == 8212
    text = (ROOT / "docker-compose.yml").read_text()
    caveat = text.split("  hj212:", 1)[0].rsplit("\n\n", 1)[1]
    assert "plain TCP" in caveat and "in clear" in caveat and "VPN" in caveat
