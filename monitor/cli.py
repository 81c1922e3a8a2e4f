"""The `envmon` command line."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import click
from pydantic import ValidationError

from monitor import __version__
from monitor.core.exceptions import EnvmonError, NotFound
from monitor.core.settings import Environment, Settings

if TYPE_CHECKING:
    from ingest.mqtt import MqttIntake

log = logging.getLogger("envmon")
DEMO_ADMIN = "demo-admin"
DEMO_BACKFILL_S = 2 * 3600  # the simulated fleet's first upload: its last two hours


def _settings(**overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"ENVMON_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else e["msg"]
            for e in exc.errors()
        )
        raise click.UsageError(f"invalid settings: {problems}") from exc
    from monitor import logs

    logs.configure(settings.log_level, settings.log_format)
    return settings


def _check_production(settings: Settings) -> None:
    problems = settings.production_problems()
    if problems:
        raise click.UsageError(
            "ENVMON_ENV=production refuses to start:\n  - " + "\n  - ".join(problems)
        )


def _migrate(settings: Settings) -> None:
    from alerts.packs import install_default_rules
    from monitor.core.db import make_engine, upgrade

    upgrade(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    with engine.begin() as conn:
        added = install_default_rules(conn)
    engine.dispose()
    if added:
        log.info("installed %d default rules", added)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="envmon")
def main() -> None:
    """envmon: environmental monitoring from MQTT sensors to inspectors' alerts.

    Settings come from ENVMON_* environment variables and a .env file; with none set,
    envmon runs on SQLite and an embedded Mosquitto in ./data. Start with:

        envmon up --simulate
    """


data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path), help="Data folder [env ENVMON_DATA_DIR]"
)


@main.command()
@click.option("--simulate", is_flag=True, help="Register and run a demo fleet with episodes.")
@click.option("--port", type=int, help="API port [env ENVMON_API_PORT, default 8000]")
@click.option("--host", help="API address [env ENVMON_API_HOST, default 127.0.0.1]")
@click.option("--mqtt-port", type=int, help="Embedded broker port [default 1884]")
@data_dir_option
def up(
    simulate: bool,
    port: int | None,
    host: str | None,
    mqtt_port: int | None,
    data_dir: Path | None,
) -> None:
    """Run broker (embedded unless ENVMON_MQTT_URL is set), ingestor and API together.

    Ctrl-C stops them in order: simulator, intake, last batch, broker.
    """
    import uvicorn

    from ingest.service import Ingestor
    from monitor.api.app import create_app
    from monitor.core.db import make_engine

    settings = _settings(api_port=port, api_host=host, mqtt_port=mqtt_port, data_dir=data_dir)
    if simulate and settings.env == Environment.production:
        raise click.UsageError(
            "--simulate registers a demo fleet and a demo key: not in production"
        )
    _check_production(settings)
    stoppers: list[Any] = []
    try:
        _migrate(settings)
        demo = _register_demo(settings) if simulate else None
        engine = make_engine(settings.sqlalchemy_url)
        stoppers.append(engine.dispose)
        broker = None
        if settings.embedded_broker:
            broker, settings = _embedded_broker(settings, engine)
            stoppers.insert(0, broker.stop)
        from alerts.notify import Dispatcher

        dispatcher = Dispatcher(settings, engine)
        dispatcher.start()
        stoppers.insert(0, dispatcher.stop)
        ingestor = Ingestor(settings, engine, hj212=True)
        ingestor.start()
        stoppers.insert(0, ingestor.stop)
        if demo is not None:
            stoppers.insert(0, _start_simulator(settings, demo))
            _seed_demo_history(settings, engine, demo)
            if ingestor.gateway is not None and ingestor.gateway.port:
                stoppers.insert(0, _start_hj212_demo(engine, demo, ingestor.gateway.port))
        base = f"http://{settings.api_host}:{settings.api_port}"
        auth_hint = '  -H "Authorization: Bearer $(cat KEYFILE)"'.replace(
            "KEYFILE", str(demo.admin_key_file) if demo else "<your key file>"
        )
        click.echo(
            f"\nenvmon is up.  API {base}/v1/docs   broker {settings.mqtt.host}:"
            f"{settings.mqtt.port}   data {settings.data_dir.resolve()}\n"
            + (
                f"Demo admin key (also in {demo.admin_key_file}):\n  {demo.admin_key}\n"
                f"Device MQTT passwords: {demo.credentials_file}\n"
                if demo
                else ""
            )
            + f"  curl{auth_hint} '{base}/v1/readings?limit=20'\n"
            f"  curl{auth_hint} '{base}/v1/alerts'\n"
            "Ctrl-C stops everything.\n",
            err=True,
        )
        app = create_app(settings)
        if ingestor.gateway is not None:
            app.state.hj212_status = ingestor.gateway.status
        if broker is not None:
            app.state.on_devices_changed = lambda: _sync_broker(settings, engine, broker)
        server = uvicorn.Server(
            uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_config=None)
        )
        stoppers.insert(
            0, _stop_on_fatal(ingestor.intake, lambda: setattr(server, "should_exit", True)).set
        )
        # uvicorn re-raises the Ctrl-C it handled; stopping is the normal way out
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        if ingestor.intake.fatal is not None:
            raise click.ClickException(str(ingestor.intake.fatal))
    finally:
        for stop in stoppers:
            stop()


def _stop_on_fatal(
    intake: MqttIntake, stop: Callable[[], None], every_s: float = 5.0
) -> threading.Event:
    """Call `stop` once the intake meets a fatal error, e.g. a login refused at a reconnect
    after a password rotation: retrying will not help, and an ingestor that silently idles
    is worse than one that exits. Set the returned event to end the watch."""
    ended = threading.Event()

    def watch() -> None:
        while not ended.wait(every_s):
            if intake.fatal is not None:
                log.error("stopping: %s", intake.fatal)
                stop()
                return

    threading.Thread(target=watch, name="envmon-fatal-watch", daemon=True).start()
    return ended


INGEST_USER = "envmon-ingest"


def _embedded_broker(settings: Settings, engine: Any) -> tuple[Any, Settings]:
    """Start the embedded Mosquitto with per-device accounts generated from the database, and
    return it with the settings the ingestor needs to log in (its own generated password)."""
    from monitor.broker import EmbeddedBroker
    from monitor.broker_auth import new_password

    folder = settings.data_dir / "mosquitto"
    folder.mkdir(parents=True, exist_ok=True)
    secret = folder / "ingest.password"
    if not secret.exists():
        secret.write_text(new_password(), encoding="utf-8")
        secret.chmod(0o600)
    password = secret.read_text(encoding="utf-8").strip()
    settings = settings.model_copy(
        update={"mqtt_url": f"mqtt://{INGEST_USER}:{password}@127.0.0.1:{settings.mqtt_port}"}
    )
    files = _sync_broker(settings, engine, None)
    broker = EmbeddedBroker(settings.data_dir, settings.mqtt_port, auth=files)
    broker.start()
    return broker, settings


def _sync_broker(settings: Settings, engine: Any, broker: Any) -> tuple[Path, Path]:
    """Write the broker's password file and ACL from the registry; reload a running broker."""
    from monitor.broker_auth import hash_password, write_broker_auth

    endpoint = settings.mqtt
    assert endpoint.username and endpoint.password
    with engine.begin() as conn:
        files = write_broker_auth(
            conn,
            settings.data_dir / "mosquitto",
            prefix=settings.mqtt_topic_prefix,
            ingest_user=endpoint.username,
            ingest_password_hash=hash_password(endpoint.password),
        )
    if broker is not None:
        broker.reload()
        log.info("broker accounts reloaded")
    return files


class Demo(NamedTuple):
    fleet: Any
    admin_key: str
    admin_key_file: Path
    credentials: dict[str, str]
    credentials_file: Path


def _register_demo(settings: Settings) -> Demo:
    from devices.fleet import demo_fleet
    from monitor import auth
    from monitor.core.db import make_engine
    from monitor.core.models import Role
    from monitor.registry import import_fleet, issue_credentials

    fleet = demo_fleet(datetime.now(UTC))
    engine = make_engine(settings.sqlalchemy_url)
    with engine.begin() as conn:
        n_sites, n_devices, _ = import_fleet(conn, {"sites": fleet.sites, "devices": fleet.devices})
        # fresh passwords at every start: the simulator needs them, and only hashes are kept
        credentials = {d["id"]: issue_credentials(conn, d["id"]) for d in fleet.devices}
        try:
            user_id = auth.find_user(conn, DEMO_ADMIN).id
        except NotFound:
            user_id = auth.create_user(conn, auth.UserCreate(name=DEMO_ADMIN, role=Role.admin))
        _, key = auth.create_key(conn, user_id, label="demo", demo=True)
    engine.dispose()
    key_file = settings.data_dir / "demo-admin.key"
    key_file.write_text(key + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    log.info("demo fleet registered: %d sites, %d devices", n_sites, n_devices)
    return Demo(fleet, key, key_file, credentials, _write_credentials(settings, credentials))


def _seed_demo_history(settings: Settings, engine: Any, demo: Demo) -> None:
    """A year of the demo DMAs' history, in the background beside the live fleet (a minute
    or so on SQLite): their daily figures, leakage rates and rules appear as it lands."""
    from monitor.demo import seed_dma_history

    until = datetime.now(UTC) - timedelta(seconds=DEMO_BACKFILL_S)

    def run() -> None:
        try:
            fleet = demo.fleet
            seed_dma_history(engine, fleet.sites, fleet.devices, fleet.simulators, until, settings)
        except Exception:  # the demo goes on without its history
            log.exception("seeding the demo DMAs' history failed")

    threading.Thread(target=run, name="envmon-demo-history", daemon=True).start()


def _write_credentials(settings: Settings, credentials: dict[str, str]) -> Path:
    """device=password lines, readable by the owner only (`grep ^dust-001= FILE`)."""
    path = settings.data_dir / "device-credentials.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("".join(f"{d}={p}\n" for d, p in sorted(credentials.items())))
    return path


def _start_simulator(settings: Settings, demo: Demo) -> Any:
    from devices.publisher import FleetPublisher

    endpoint = settings.mqtt
    publisher = FleetPublisher(
        demo.fleet.simulators,
        host=endpoint.host,
        port=endpoint.port,
        prefix=settings.mqtt_topic_prefix,
        credentials=demo.credentials,
        announce_status=True,
        interval_s=10.0,
        backfill_s=DEMO_BACKFILL_S,
        backfill_step_s=60,
        client_id="envmon-demo-fleet",
    )
    stop = threading.Event()

    def run() -> None:
        try:
            publisher.connect()
            publisher.backfill(datetime.now(UTC))
            publisher.run(stop)
        except Exception:
            log.exception("demo fleet stopped")
        finally:
            publisher.close()

    thread = threading.Thread(target=run, name="envmon-demo-fleet", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(15)

    return halt


HJ212_DEMO_DEVICE = "dust-hj212-01"
HJ212_DEMO_MN = "ENVMONDEMO00000000000001"


def _start_hj212_demo(engine: Any, demo: Demo, port: int) -> Any:
    """One dust monitor that speaks HJ 212 to the gateway, beside the MQTT fleet. Registered
    only once the gateway listens, so a demo without the gateway has no silent device."""
    from devices.hj212_logger import HJ212Logger
    from devices.simulators import DustMonitor
    from monitor.broker_auth import new_password
    from monitor.core.catalogue import DeviceKind
    from monitor.registry import DeviceCreate, upsert_device

    site = next(d["site_id"] for d in demo.fleet.devices if d["kind"] == "dust_monitor")
    password = new_password()[:6]  # an HJ 212 PW is six characters
    with engine.begin() as conn:
        upsert_device(
            conn,
            DeviceCreate(
                id=HJ212_DEMO_DEVICE,
                site_id=site,
                kind=DeviceKind.dust_monitor,
                name="HJ 212 dust monitor (simulated logger)",
                interval_s=10,
                hj212_mn=HJ212_DEMO_MN,
                hj212_password=password,
            ),
        )
    logger = HJ212Logger(
        DustMonitor(HJ212_DEMO_DEVICE),
        mn=HJ212_DEMO_MN,
        password=password,
        host="127.0.0.1",
        port=port,
    )
    stop = threading.Event()

    def run() -> None:
        try:
            logger.run(stop, 10.0)
        except Exception:
            log.exception("HJ 212 demo logger stopped")

    thread = threading.Thread(target=run, name="envmon-demo-hj212", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(15)

    return halt


@main.command()
@click.option("--port", type=int, help="API port [env ENVMON_API_PORT, default 8000]")
@click.option("--host", help="API address [env ENVMON_API_HOST, default 127.0.0.1]")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="worker processes, about one per core [env ENVMON_API_WORKERS, default 1]",
)
def api(port: int | None, host: str | None, workers: int | None) -> None:
    """Serve the HTTP API alone (run `envmon migrate` first)."""
    import uvicorn

    from monitor.api.app import create_app

    settings = _settings(api_port=port, api_host=host, api_workers=workers)
    _check_production(settings)
    if settings.api_workers == 1:
        uvicorn.run(
            create_app(settings), host=settings.api_host, port=settings.api_port, log_config=None
        )
        return
    # Each worker process builds its own app from the environment: pass the options on.
    os.environ.update(
        ENVMON_API_HOST=settings.api_host,
        ENVMON_API_PORT=str(settings.api_port),
        ENVMON_API_WORKERS=str(settings.api_workers),
    )
    uvicorn.run(
        "monitor.api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers,
        log_config=None,
    )


@main.command()
@click.option(
    "--retire",
    "retire_id",
    metavar="CLIENT_ID",
    help="Retire a member of the shared group: store what the broker queued for CLIENT_ID, "
    "then end its session (a member removed for good), and exit.",
)
def ingest(retire_id: str | None) -> None:
    """Run the ingestor alone: subscribe, validate, store, evaluate rules, acknowledge."""
    from ingest.service import Ingestor, retire, tune_gc
    from monitor.core.db import make_engine

    settings = _settings()
    if settings.embedded_broker:
        raise click.UsageError("`envmon ingest` needs ENVMON_MQTT_URL (a running broker)")
    _check_production(settings)
    if retire_id is not None:
        engine = make_engine(settings.sqlalchemy_url)
        try:
            stats = retire(settings, engine, retire_id)
        finally:
            engine.dispose()
        click.echo(f"retired {retire_id}: its session is ended; {stats}")
        return
    from prometheus_client import start_http_server

    engine = make_engine(settings.sqlalchemy_url)
    ingestor = Ingestor(settings, engine)
    start_http_server(settings.metrics_port)
    log.info("metrics on :%d/metrics", settings.metrics_port)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    tune_gc()
    ingestor.start()
    from alerts.notify import Dispatcher

    dispatcher = Dispatcher(settings, engine)
    dispatcher.start()
    watcher = _stop_on_fatal(ingestor.intake, done.set)
    try:
        done.wait()
        if ingestor.intake.fatal is not None:
            raise click.ClickException(str(ingestor.intake.fatal))
    finally:
        watcher.set()
        ingestor.stop()
        dispatcher.stop()
        engine.dispose()


@main.command()
def hj212() -> None:
    """Run the HJ 212 gateway alone: loggers' frames stored, evaluated and answered (9014)
    after commit, by a writer and spool of its own."""
    from prometheus_client import start_http_server

    from ingest.service import Ingestor
    from monitor.core.db import make_engine

    settings = _settings()
    _check_production(settings)
    if not settings.hj212_port:
        raise click.UsageError("`envmon hj212` needs ENVMON_HJ212_PORT (0 turns the gateway off)")
    if settings.spool_file is None:
        # its own spool: an `envmon ingest` beside it (same data dir) replays its own file
        settings = settings.model_copy(
            update={"spool_file": settings.data_dir / "spool-hj212.sqlite"}
        )
    engine = make_engine(settings.sqlalchemy_url)
    ingestor = Ingestor(settings, engine, mqtt=False, hj212=True, required=True)
    start_http_server(settings.metrics_port)
    log.info("metrics on :%d/metrics", settings.metrics_port)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        ingestor.start()
        done.wait()
    finally:
        ingestor.stop()
        engine.dispose()


@main.command()
@click.option("--once", is_flag=True, help="One pass, then exit.")
def notify(once: bool) -> None:
    """Send pending alert notifications to ENVMON_WEBHOOK_URL (envmon up and envmon ingest
    already do; run this for a separate sender, PostgreSQL only)."""
    from alerts.notify import Dispatcher
    from monitor.core.db import make_engine

    settings = _settings()
    _check_production(settings)
    if not settings.webhook_url:
        raise click.UsageError("`envmon notify` needs ENVMON_WEBHOOK_URL and ENVMON_WEBHOOK_SECRET")
    engine = make_engine(settings.sqlalchemy_url)
    dispatcher = Dispatcher(settings, engine)
    try:
        if once:
            click.echo(f"sent {dispatcher.run_once()} notifications")
            return
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        dispatcher.start()
        done.wait()
    finally:
        dispatcher.stop()
        engine.dispose()


@main.command()
@click.option(
    "--since",
    default="7d",
    show_default=True,
    help="From when: an ISO date-time (2026-11-01T00:00+08:00) or a span back from now (36h, 7d)",
)
@click.option("--rule", "rule_names", multiple=True, help="Only this rule (repeatable)")
@click.option("--device", "device_ids", multiple=True, help="Only this device (repeatable)")
@data_dir_option
def reevaluate(
    since: str, rule_names: tuple[str, ...], device_ids: tuple[str, ...], data_dir: Path | None
) -> None:
    """Recompute alerts from the stored readings, device by device (after a rule change, or
    to check the engine). Idempotent: a second run changes nothing."""
    from zoneinfo import ZoneInfo

    from sqlalchemy import select

    from alerts.evaluator import reevaluate as recompute
    from monitor.core.db import make_engine
    from monitor.core.models import Device, Rule, table

    settings = _settings(data_dir=data_dir)
    start = _since(since)
    engine = make_engine(settings.sqlalchemy_url)
    rules_t, devices_t = table(Rule), table(Device)
    with engine.connect() as conn:
        rule_ids: list[int] | None = None
        if rule_names:
            found = dict(
                conn.execute(
                    select(rules_t.c.name, rules_t.c.id).where(rules_t.c.name.in_(rule_names))
                ).all()
            )
            missing = sorted(set(rule_names) - set(found))
            if missing:
                raise click.UsageError(f"no such rule: {', '.join(missing)}")
            rule_ids = list(found.values())
        ids = list(device_ids) or list(
            conn.execute(select(devices_t.c.id).order_by(devices_t.c.id)).scalars()
        )
    totals = {"opened": 0, "escalated": 0, "resolved": 0, "retracted": 0}
    tz = ZoneInfo(settings.timezone)
    with click.progressbar(ids, label=f"re-evaluating since {start.isoformat()}") as bar:
        for device_id in bar:
            with engine.begin() as conn:  # one device a transaction: progress is kept
                outcome = recompute(conn, [device_id], start, tz, rule_ids)
            for key in totals:
                totals[key] += getattr(outcome, key)
    engine.dispose()
    changes = ", ".join(f"{n} {what}" for what, n in totals.items())
    same = "" if any(totals.values()) else " (the alerts already matched the readings)"
    click.echo(f"{len(ids)} devices: {changes}{same}")


def _since(value: str) -> datetime:
    from datetime import timedelta

    units = {"m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: an ISO date-time or a span like 7d") from exc
    if at.tzinfo is None:
        raise click.BadParameter(f"{value!r}: give the time zone, e.g. +08:00")
    return at


@main.command()
@data_dir_option
def migrate(data_dir: Path | None) -> None:
    """Bring the database schema up to date and install the default rules on first start."""
    settings = _settings(data_dir=data_dir)
    _migrate(settings)
    click.echo("database is up to date")


@main.command()
@click.option(
    "--fleet",
    "fleet_file",
    type=click.Path(exists=True, path_type=Path),
    help="Fleet file (TOML/JSON); default: the demo fleet with episodes",
)
@click.option("--broker", help="Broker URL [default ENVMON_MQTT_URL or the embedded port]")
@click.option("--prefix", help="Topic prefix [env ENVMON_MQTT_TOPIC_PREFIX, default envmon]")
@click.option(
    "--interval",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds between readings per device",
)
@click.option(
    "--backfill",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds of history to publish first",
)
@click.option("--duration", type=float, help="Stop after this many seconds")
@click.option("--seed", type=int, default=7, show_default=True)
def simulate(
    fleet_file: Path | None,
    broker: str | None,
    prefix: str | None,
    interval: float,
    backfill: float,
    duration: float | None,
    seed: int,
) -> None:
    """Publish a simulated fleet to any broker (QoS 1, bounded in flight)."""
    from devices.fleet import demo_fleet, load_fleet_file, simulators_for
    from devices.publisher import FleetPublisher
    from monitor.core.settings import MqttEndpoint

    settings = _settings(mqtt_topic_prefix=prefix)
    endpoint = MqttEndpoint(broker) if broker else settings.mqtt
    if fleet_file:
        doc = load_fleet_file(fleet_file)
        kinds = {s["id"]: s["kind"] for s in doc["sites"]}
        sims = simulators_for(doc["devices"], seed=seed, site_kinds=kinds)
    else:
        sims = demo_fleet(datetime.now(UTC), seed=seed).simulators
    publisher = FleetPublisher(
        sims,
        host=endpoint.host,
        port=endpoint.port,
        prefix=settings.mqtt_topic_prefix,
        username=endpoint.username,
        password=endpoint.password,
        interval_s=interval,
        backfill_s=backfill,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    publisher.connect()
    started = time.monotonic()
    try:
        if backfill:
            publisher.backfill(datetime.now(UTC))
        publisher.run(stop, duration_s=duration)
    finally:
        publisher.close()
    click.echo(
        f"published {publisher.published} messages in {time.monotonic() - started:.1f}s",
        err=True,
    )


@main.group()
def devices() -> None:
    """Register sites and devices."""


@devices.command("import")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
def devices_import(file: Path) -> None:
    """Register (or update) the sites and devices of a fleet file (TOML or JSON)."""
    from devices.fleet import load_fleet_file
    from monitor.core.db import make_engine
    from monitor.registry import import_fleet

    settings = _settings()
    try:
        doc = load_fleet_file(file)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with engine.begin() as conn:
            n_sites, n_devices, issued = import_fleet(conn, doc)
    except EnvmonError as exc:  # e.g. an hj212_mn another device has: nothing is imported
        raise click.ClickException(f"{file}: {exc.message}") from exc
    finally:
        engine.dispose()
    click.echo(f"registered {n_sites} sites and {n_devices} devices from {file}")
    if issued:
        path = _write_credentials(settings, issued)
        click.echo(
            f"MQTT passwords for {len(issued)} new devices written to {path} (shown once; "
            "regenerate the broker's files: envmon broker config)"
        )


@main.group()
def consumption() -> None:
    """Registered consumption per DMA and billing period (CJJ 92's Q_a)."""


@consumption.command("import")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
def consumption_import(file: Path) -> None:
    """Register the billing periods of a CSV file (site_id, period_start, period_end, billed_m3,
    and optionally unbilled_m3, residential_metered_m3); all or nothing."""
    import csv
    from datetime import date
    from zoneinfo import ZoneInfo

    from alerts.evaluator import evaluate_sites
    from monitor.consumption import import_csv
    from monitor.core.exceptions import EnvmonError

    settings = _settings()
    try:
        with _connection() as conn:
            n = import_csv(conn, "cli", file)
            # the DMAs' leakage rates move from each site's earliest new period on
            since: dict[str, date] = {}
            with file.open(newline="", encoding="utf-8-sig") as f:
                for row in csv.DictReader(f):
                    start = date.fromisoformat(row["period_start"].strip())
                    site = row["site_id"].strip()
                    since[site] = min(start, since.get(site, start))
            evaluate_sites(
                conn,
                since,
                ZoneInfo(settings.timezone),
                outlet_pressure_mpa=settings.leakage_outlet_pressure_mpa,
                frost_depth_m=settings.leakage_frost_depth_m,
            )
    except EnvmonError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"registered {n} consumption periods from {file}")


@devices.command("credentials")
@click.argument("device_id")
@click.option("--rotate", is_flag=True, help="Replace the password of a device that has one")
def devices_credentials(device_id: str, rotate: bool) -> None:
    """Issue an MQTT password for DEVICE_ID and print it once. The broker learns it when its
    files are regenerated (envmon broker config) and reloaded."""
    from sqlalchemy import select

    from monitor.core.models import Device, table
    from monitor.registry import issue_credentials

    with _connection() as conn:
        devices_t = table(Device)
        row = conn.execute(
            select(devices_t.c.mqtt_password_hash).where(devices_t.c.id == device_id)
        ).first()
        if row is None:
            raise click.ClickException(f"device {device_id!r} does not exist")
        if row.mqtt_password_hash and not rotate:
            raise click.ClickException(
                f"{device_id} has credentials already; --rotate replaces them"
            )
        password = issue_credentials(conn, device_id)
    click.echo(f"{device_id} MQTT username {device_id} password (shown once): {password}")


@main.group()
def broker() -> None:
    """The production broker's accounts."""


@broker.command("config")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for passwd and acl (e.g. deploy/mosquitto)",
)
def broker_config(out: Path) -> None:
    """Write Mosquitto's password file and ACL from the registry: one account per active
    device, and the ingestor's account from ENVMON_MQTT_URL. Reload the broker after
    (docker compose kill -s SIGHUP mosquitto)."""
    from monitor.broker_auth import hash_password, write_broker_auth

    settings = _settings()
    endpoint = settings.mqtt
    if not settings.mqtt_url or not endpoint.username or not endpoint.password:
        raise click.UsageError("ENVMON_MQTT_URL must carry the ingestor's user and password")
    with _connection() as conn:
        passwd, acl = write_broker_auth(
            conn,
            out,
            prefix=settings.mqtt_topic_prefix,
            ingest_user=endpoint.username,
            ingest_password_hash=hash_password(endpoint.password),
        )
    click.echo(f"wrote {passwd} and {acl}; reload the broker (SIGHUP) to apply them")


@main.group()
def users() -> None:
    """People who use the API: roles admin, inspector, viewer; scoped by district."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "inspector", "viewer"]), required=True)
@click.option("--district", help="Scope of an inspector or viewer (unset = every district)")
@click.option("--key/--no-key", default=True, show_default=True, help="Issue an API key too")
def users_add(name: str, role: str, district: str | None, key: bool) -> None:
    """Create a user (and print a first API key, shown this once)."""
    from monitor import auth
    from monitor.core.models import Role

    with _connection() as conn:
        try:
            user_id = auth.create_user(
                conn, auth.UserCreate(name=name, role=Role(role), district=district)
            )
        except EnvmonError as exc:
            raise click.ClickException(exc.message) from exc
        token = auth.create_key(conn, user_id, label="first")[1] if key else None
    click.echo(f"user {name} ({role}{', ' + district if district else ''}) created")
    if token:
        click.echo(f"API key (shown once): {token}")


@users.command("list")
def users_list() -> None:
    """Every user with role, district and state."""
    from sqlalchemy import select

    from monitor.core.models import User, table

    with _connection() as conn:
        rows = conn.execute(select(table(User)).order_by("name")).all()
    for r in rows:
        state = "disabled" if r.disabled else "active"
        click.echo(f"{r.name:24} {r.role:10} {r.district or '(all districts)':20} {state}")


@users.command("disable")
@click.argument("name")
def users_disable(name: str) -> None:
    """Disable a user: every key of theirs stops working at once."""
    from monitor import auth

    with _connection() as conn:
        try:
            auth.set_disabled(conn, name, True)
        except EnvmonError as exc:
            raise click.ClickException(exc.message) from exc
    click.echo(f"user {name} disabled")


@main.group()
def keys() -> None:
    """API keys (bearer tokens), stored only as hashes."""


@keys.command("create")
@click.argument("user")
@click.option("--label", help="What the key is for")
def keys_create(user: str, label: str | None) -> None:
    """Issue a key for USER; it is printed this once."""
    from monitor import auth

    with _connection() as conn:
        try:
            key_id, token = auth.create_key(conn, auth.find_user(conn, user).id, label=label)
        except EnvmonError as exc:
            raise click.ClickException(exc.message) from exc
    click.echo(f"key {key_id} for {user} (shown once): {token}")


@keys.command("list")
@click.argument("user", required=False)
def keys_list(user: str | None) -> None:
    """Keys (id, prefix, owner, state), never their secrets."""
    from sqlalchemy import select

    from monitor.core.models import ApiKey, User, table

    k, u = table(ApiKey), table(User)
    q = select(k, u.c.name).join(u, u.c.id == k.c.user_id).order_by(k.c.id)
    if user:
        q = q.where(u.c.name == user)
    with _connection() as conn:
        rows = conn.execute(q).all()
    for r in rows:
        state = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active"
        demo = " demo" if r.demo else ""
        click.echo(f"{r.id:5} envmon_{r.prefix}_…  {r.name:20} {r.label or '':16} {state}{demo}")


@keys.command("revoke")
@click.argument("key_id", type=int)
def keys_revoke(key_id: int) -> None:
    """Revoke a key by id; it stops working at once."""
    from monitor import auth

    with _connection() as conn:
        try:
            auth.revoke_key(conn, key_id)
        except EnvmonError as exc:
            raise click.ClickException(exc.message) from exc
    click.echo(f"key {key_id} revoked")


@contextlib.contextmanager
def _connection() -> Iterator[Any]:
    from monitor.core.db import make_engine

    settings = _settings()
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()
