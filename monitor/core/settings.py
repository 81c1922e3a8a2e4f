"""One `Settings` object per process, read from `ENVMON_*` environment variables and `.env`."""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

# Passwords nobody should run production with (the empty one included).
WEAK_SECRETS = frozenset(
    {None, "", "postgres", "password", "changeme", "change-me", "envmon", "secret", "admin", "x"}
)


class Environment(StrEnum):
    development = "development"
    production = "production"


TILE_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class MapDatum(StrEnum):
    """The geodetic datum a map's tiles are drawn in (monitor/web/geo.py)."""

    wgs84 = "wgs84"
    gcj02 = "gcj02"


class MqttEndpoint:
    """Host, port and credentials parsed from an `mqtt://user:pass@host:port` URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(
                f"unsupported MQTT URL scheme {parts.scheme!r} (use mqtt:// or mqtts://)"
            )
        self.tls = parts.scheme in ("mqtts", "ssl")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = parts.username
        self.password = parts.password

    def __repr__(self) -> str:
        return f"MqttEndpoint({self.host}:{self.port}, tls={self.tls})"


class Settings(BaseSettings):
    """Every setting of envmon. Each field is read from `ENVMON_<NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix="ENVMON_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Environment = Field(
        Environment.development,
        description="development or production (production-only checks come with authentication)",
    )
    data_dir: Path = Field(
        Path("data"), description="Folder for the embedded database, broker and spool"
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pw@host/db; "
        "unset = SQLite file in the data folder",
    )
    mqtt_url: str | None = Field(
        None,
        description="Broker URL, e.g. mqtt://user:pw@host:1883; "
        "unset = embedded broker on loopback",
    )
    mqtt_port: int = Field(
        1884,
        description="Port of the embedded broker (when mqtt_url is unset); 1884 so it "
        "does not clash with a system Mosquitto on 1883",
    )
    mqtt_topic_prefix: str = Field(
        "envmon", description="First topic level: {prefix}/v1/devices/..."
    )
    mqtt_client_id: str = Field(
        "envmon-ingest",
        description="Ingestor client id; its persistent session lives on the broker",
    )
    mqtt_shared_group: str | None = Field(
        None, description="Subscribe through $share/<group>/... so several ingestors split the load"
    )
    mqtt_session_expiry_s: int = Field(
        7 * 24 * 3600,
        ge=1,
        le=2**32 - 2,
        description="How long the broker keeps an ingestor's session and queue while it is "
        "away; with a shared group, a member gone for good leaves its share queued this "
        "long (`envmon ingest --retire CLIENT_ID` ends it at once)",
    )
    mqtt_ca_file: Path | None = Field(
        None,
        description="CA certificate that signed the broker's, for mqtts:// (unset = the "
        "system trust store)",
    )
    mqtt_receive_maximum: int = Field(
        5000, ge=1, le=65535, description="Un-acknowledged QoS 1 messages the broker may send us"
    )
    api_host: str = Field("127.0.0.1", description="Address the API listens on")
    api_port: int = Field(8000, description="Port the API listens on")
    api_workers: int = Field(
        1, ge=1, le=64, description="API worker processes (`envmon api`); about one per core"
    )
    api_max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest API request body")
    api_max_range_days: int = Field(
        400, ge=1, description="Longest time range one API query may ask for"
    )
    batch_max_messages: int = Field(2000, ge=1, description="Messages per write batch, at most")
    batch_max_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Payload bytes per write batch, at most"
    )
    batch_max_age_ms: int = Field(200, ge=1, description="Longest a reading waits for its batch")
    ingest_copy: bool = Field(
        True,
        description="PostgreSQL: COPY (binary) each batch into a staging table; false: one "
        "INSERT ... SELECT unnest(...), for servers that cannot COPY (PGlite/TimescaleDB WASM)",
    )
    eval_cache: bool = Field(
        True,
        description="Keep each (rule, device)'s window state in memory between batches and "
        "fold in-order readings into it; false: rebuild every pair from the database",
    )
    dma_defer_s: float = Field(
        5.0,
        ge=0,
        description="While the ingestor is behind (a batch waiting), recompute the DMA days "
        "(night flow, leakage) and judge their site rules at most this often, not after every "
        "batch; the days owed are kept in the database (dma_pending). 0: after every batch",
    )
    eval_shadow: bool = Field(
        False,
        description="Check the kept state: after each batch, rebuild its pairs without it (rolled "
        "back) and count the alerts that differ (envmon_eval_shadow_mismatches_total); doubles "
        "the evaluation cost, for benchmarks and audits",
    )
    queue_max_messages: int = Field(
        10000, ge=1, description="Bound of the queue between the MQTT thread and the writer"
    )
    spool_max_messages: int = Field(
        2_000_000, ge=1, description="Bound of the local spool used while the database is away"
    )
    spool_file: Path | None = Field(
        None, description="Spool file (SQLite); unset = <data dir>/spool.sqlite"
    )
    retention_dead_letters_days: int = Field(
        30, ge=0, description="Dead letters older than this are deleted; 0 keeps them forever"
    )
    retention_notifications_days: int = Field(
        30,
        ge=0,
        description="Sent or failed notifications older than this are deleted (pending ones "
        "never); 0 keeps them forever",
    )
    retention_readings_days: int = Field(
        0,
        ge=0,
        description="Readings older than this are deleted on plain PostgreSQL and SQLite "
        "(TimescaleDB: timescale_retention); hourly rollups are kept; 0 keeps them forever",
    )
    retention_alert_events_days: int = Field(
        0,
        ge=0,
        description="Events of alerts closed (resolved or retracted) longer ago than this are "
        "deleted, the alert row kept; open alerts keep all theirs; 0 keeps them forever",
    )
    retention_interval_s: float = Field(
        3600, gt=0, description="How often the ingestor applies the retention settings"
    )
    metrics_port: int = Field(
        9108, description="Port of /metrics for `envmon ingest` (the API serves its own)"
    )
    hj212_host: str = Field(
        "127.0.0.1",
        description="Address the HJ 212 gateway listens on (0.0.0.0 for loggers, on a private "
        "APN or VPN only: HJ 212 is plain TCP with the PW in clear)",
    )
    hj212_port: int = Field(
        8212, ge=0, le=65535, description="TCP port of the HJ 212 gateway; 0 = no gateway"
    )
    hj212_idle_s: float = Field(
        600.0,
        gt=0,
        description="An HJ 212 connection silent this long is closed; a logged-in logger's "
        "limit is at least 3 of its intervals (interval_s, or the RtdInterval it reported)",
    )
    hj212_ask_rtd_interval: bool = Field(
        False,
        description="Ask each logger for its RtdInterval (1061) once per connection; the "
        "answer is recorded beside the device's interval_s",
    )
    hj212_max_connections_per_address: int = Field(
        0,
        ge=0,
        description="Open HJ 212 connections one source address may hold; 0 = no limit (loggers "
        "behind a carrier's NAT share addresses)",
    )
    webhook_url: str | None = Field(
        None,
        description="Where alert notifications are POSTed (JSON, HMAC-signed, see "
        "docs/notifications.md); unset = they stay in the outbox, nothing is sent",
    )
    webhook_secret: str | None = Field(
        None,
        description="Key of the HMAC-SHA256 signature in X-Envmon-Signature; "
        "required when webhook_url is set",
    )
    notify_group_s: int = Field(
        60, ge=0, description="One message per site per this many seconds (0 = send at once)"
    )
    notify_max_attempts: int = Field(
        8, ge=1, description="Delivery attempts before a notification is marked failed"
    )
    notify_backoff_s: float = Field(
        5.0,
        gt=0,
        description="Delay before the first retry; doubles with each attempt "
        "(capped at 1 hour, with jitter)",
    )
    notify_timeout_s: float = Field(
        10.0, gt=0, description="Timeout of one webhook request (connect, and each read)"
    )
    max_payload_bytes: int = Field(
        256 * 1024, ge=64, description="Larger messages are dead letters"
    )
    max_batch_items: int = Field(1000, ge=1, description="Longest accepted `batch` array")
    future_tolerance_s: int = Field(
        300, ge=0, description="Readings stamped further in the future are dead letters"
    )
    offline_after_s: int = Field(
        600, ge=1, description="A device unseen this long is offline (standards.md §6: 600 s)"
    )
    timescale_chunk_interval: str = Field(
        "1 day", description="TimescaleDB chunk interval of readings (at migration time)"
    )
    timescale_compress_after: str = Field(
        "7 days", description="TimescaleDB compresses readings chunks older than this"
    )
    timescale_retention: str | None = Field(
        None, description="TimescaleDB drops readings older than this (unset = keep all)"
    )
    lateness_horizon_s: int = Field(
        7200,
        ge=0,
        description="Readings older than this behind their device's newest event time are "
        "stored and reported but no longer re-evaluate alert windows",
    )
    notify_ended_episodes: bool = Field(
        False,
        description="Page for an episode that late data shows had already ended (false: it "
        "is recorded and visible, not notified)",
    )
    timezone: str = Field(
        "Asia/Shanghai", description="The city's time zone: calendar periods, days, day/night"
    )
    leakage_outlet_pressure_mpa: float | None = Field(
        None,
        ge=0,
        le=2,
        description="Annual mean outlet pressure of the supply area's plants, MPa (CJJ 92 R3; "
        "unset: R3 = 0)",
    )
    leakage_frost_depth_m: float | None = Field(
        None,
        ge=0,
        le=10,
        description="Maximum frost depth of the supply area, m (CJJ 92 R4; unset: R4 = 0)",
    )
    web_session_hours: float = Field(
        12.0,
        gt=0,
        description="A web page sign-in lasts this long (signing out, revoking the key or "
        "disabling the user end it sooner)",
    )
    map_tiles: str = Field(
        "",
        description="Tile URL template of the web map ({z}/{x}/{y}, Web Mercator), e.g. "
        "https://tiles.example.gov.cn/{z}/{x}/{y}.png; empty = sites on a coordinate grid, no "
        "tiles. The page's CSP allows that one host",
    )
    map_tiles_datum: MapDatum = Field(
        MapDatum.wgs84,
        description="Datum the tiles are drawn in: wgs84 (also TianDiTu's CGCS2000, OSM) or "
        "gcj02 (AMap, Tencent: sites are converted from WGS-84); Baidu's BD-09 is not supported",
    )
    map_tiles_attribution: str = Field(
        "", description="Credit line the tile provider requires, drawn on the map"
    )
    log_level: str = Field("INFO", description="Logging level")
    log_format: str = Field("text", description="text or json")

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str | None) -> str | None:
        if value:
            MqttEndpoint(value)
        return value

    @field_validator("map_tiles")
    @classmethod
    def _check_map_tiles(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        parts = urlsplit(value)
        # the host goes into the page's CSP header: a plain host name or address, no userinfo
        if parts.scheme not in ("http", "https") or not TILE_HOST.fullmatch(parts.netloc):
            raise ValueError(
                f"ENVMON_MAP_TILES must be an http(s)://host[:port]/... template: {value!r}"
            )
        missing = [k for k in ("{z}", "{x}", "{y}") if k not in value]
        if missing:
            raise ValueError(f"ENVMON_MAP_TILES needs {', '.join(missing)}: {value!r}")
        return value

    @property
    def map_tiles_origin(self) -> str:
        """scheme://host[:port] of the tile server ('' without tiles), for the page's CSP."""
        parts = urlsplit(self.map_tiles)
        return f"{parts.scheme}://{parts.netloc}" if self.map_tiles else ""

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"ENVMON_WEBHOOK_URL must be an http:// or https:// URL: {value!r}")
        return value or None

    def model_post_init(self, context: object, /) -> None:
        # pydantic reports a ValueError raised here as a ValidationError, like a validator's
        if self.webhook_url and not self.webhook_secret:
            raise ValueError(
                "ENVMON_WEBHOOK_SECRET must be set when ENVMON_WEBHOOK_URL is: every "
                "notification is signed with it (`openssl rand -hex 32` makes a good one)"
            )

    @property
    def web_session_max_age(self) -> timedelta:
        return timedelta(hours=self.web_session_hours)

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'envmon.db').resolve()}"

    def production_problems(self) -> list[str]:
        """What keeps this configuration from being a production one (empty when none)."""
        if self.env != Environment.production:
            return []
        problems = []
        if not self.database_url or self.database_url.startswith("sqlite"):
            problems.append("ENVMON_DATABASE_URL must point at PostgreSQL")
        elif make_url(self.database_url).password in WEAK_SECRETS:
            problems.append("the database password in ENVMON_DATABASE_URL is a default one")
        if not self.mqtt_url:
            problems.append("ENVMON_MQTT_URL must point at the production broker")
        elif self.mqtt.password in WEAK_SECRETS:
            problems.append("the broker password in ENVMON_MQTT_URL is missing or a default one")
        if self.webhook_url and (
            self.webhook_secret in WEAK_SECRETS or len(self.webhook_secret or "") < 16
        ):
            problems.append("ENVMON_WEBHOOK_SECRET is a default or shorter than 16 characters")
        return problems

    @property
    def spool_path(self) -> Path:
        return self.spool_file or self.data_dir / "spool.sqlite"

    @property
    def embedded_broker(self) -> bool:
        return not self.mqtt_url

    @property
    def mqtt(self) -> MqttEndpoint:
        return MqttEndpoint(self.mqtt_url or f"mqtt://127.0.0.1:{self.mqtt_port}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def markdown_table() -> str:
    """The settings table of README.md (`python -m monitor.core.settings` prints it)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        default = getattr(default, "value", default)
        shown = "unset" if default is None else "empty" if default == "" else f"`{default}`"
        lines.append(f"| `ENVMON_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
