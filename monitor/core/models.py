"""Table definitions, the one schema for SQLite and PostgreSQL/TimescaleDB.

Alembic revisions in `migrations/` create these tables; this module is what the code queries.
States are `StrEnum`s stored as text, so a new state needs no type migration.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, ClassVar, cast

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware instant, stored in UTC on every backend.

    SQLite has no time zone type: values are stored as naive UTC text and given back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is UTC:
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def list_of(item: type[Integer] | type[Float[float]]) -> TypeEngine[Any]:
    """A list column: a PostgreSQL array of `item`, a JSON list on SQLite."""
    return ARRAY(item()).with_variant(JSON(), "sqlite")


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class DeviceStatus(StrEnum):
    active = "active"
    retired = "retired"


class AlertStatus(StrEnum):
    pending = "pending"  # a "for" window in progress: violating, not yet long enough
    firing = "firing"
    acknowledged = "acknowledged"
    resolved = "resolved"
    # later data shows the episode never happened as raised (merged into another, or gone
    # when a late reading changed a mean): kept as evidence, never open
    retracted = "retracted"


# the states an alert is over in; any other is "open" (one per rule and device)
CLOSED = (AlertStatus.resolved, AlertStatus.retracted)


class Severity(StrEnum):
    warning = "warning"
    alarm = "alarm"


class Aggregate(StrEnum):
    raw = "raw"
    mean = "mean"  # rolling mean over (t - window_s, t]
    period_mean = "period_mean"  # calendar 15 min / hour / day in the city's time zone
    # rolling mean of the valid hourly means over window_s (whole hours), from the rollups
    hourly_mean = "hourly_mean"


class AlertEventKind(StrEnum):
    pending = "pending"
    opened = "opened"
    escalated = "escalated"
    acknowledged = "acknowledged"
    resolved = "resolved"
    comment = "comment"
    assigned = "assigned"
    reopened = "reopened"  # late data shows a resolved episode had not ended
    retracted = "retracted"  # late data shows the episode did not happen as raised


class RuleKind(StrEnum):
    threshold = "threshold"  # a value (raw, window mean, calendar-period mean) against tiers
    no_data = "no_data"  # nothing from a device for params.minutes
    rate_of_change = "rate_of_change"  # change over params.window_s (pressure falling fast)
    flag_held = "flag_held"  # a quality flag (D, B, ...) held longer than params.minutes
    daily_count = "daily_count"  # more than params.max_hours exceeding hours in a local day
    reference_diff = "reference_diff"  # hourly mean minus the reference stations' mean
    composite = "composite"  # params.all / params.any of other rules' states
    # a DMA's leakage rules: their subject is the DMA site (alerts/kinds.py, docs/leakage.md)
    night_flow_rise = "night_flow_rise"  # the night's MNF against the previous valid nights'
    net_night_flow = "net_night_flow"  # (MNF - legitimate night use) per connection, L/conn/h
    burst = "burst"  # a slot's net inflow against the same slot of the previous days
    leakage_rate = "leakage_rate"  # rolling 12-month CJJ 92 leakage rate R_BL, percent


class NotificationStatus(StrEnum):
    pending = "pending"
    sent = "sent"
    failed = "failed"  # gave up after the last retry


class Site(Base):
    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    district: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # DMA parameters (kind "dma"; standards.md §5.3): null means the method's default
    connections: Mapped[int | None] = mapped_column(Integer)  # service connections
    mains_km: Mapped[float | None] = mapped_column(Float)  # mains DN75 and above
    night_from: Mapped[str | None] = mapped_column(String(5))  # local "HH:MM", default 02:00
    night_to: Mapped[str | None] = mapped_column(String(5))  # default 04:00
    night_use_l_per_conn_h: Mapped[float | None] = mapped_column(Float)  # default 1.7
    special_night_use_m3h: Mapped[float | None] = mapped_column(Float)  # default 0
    leakage_exponent: Mapped[float | None] = mapped_column(Float)  # N1, default 1.0


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=DeviceStatus.active)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column()
    # the newest event time stored for the device: the lateness horizon is measured from it
    watermark_at: Mapped[datetime | None] = mapped_column()
    # moved by every transaction that stores readings of the device: an evaluator's cached
    # state for it is good only at the version it was built at (alerts/incremental.py)
    eval_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # seconds between the device's readings (HJ 212 RtdInterval): what "expected samples" and
    # "no data" are measured against
    interval_s: Mapped[int] = mapped_column(Integer, default=60)
    # arrival minus event time of the newest reading in its last message, in seconds
    clock_skew_s: Mapped[float | None] = mapped_column(Float)
    # "online"/"offline" as the device last said on its status topic (birth / last will)
    connection: Mapped[str | None] = mapped_column(String(16))
    # the device's MQTT password, hashed in Mosquitto's own format (PBKDF2-SHA512, "$7$...")
    # so the broker's password file can be written from it; the password itself is shown once
    mqtt_password_hash: Mapped[str | None] = mapped_column(String(255))
    # what a leak meter is to its DMA (catalogue.DmaRole); null means inlet
    dma_role: Mapped[str | None] = mapped_column(String(16))
    # HJ 212 identity (ingest/hj212): the logger's MN and its PW, hashed like the MQTT one
    hj212_mn: Mapped[str | None] = mapped_column(String(64), unique=True)
    hj212_password_hash: Mapped[str | None] = mapped_column(String(255))
    # unit its particulate codes arrive in: "ug/m3" (default when None) or "ng/m3" (§1.11)
    hj212_unit: Mapped[str | None] = mapped_column(String(16))
    # which of its HJ 212 series the rules see: rtd (null), minute or hour (docs/hj212.md)
    hj212_rules_from: Mapped[str | None] = mapped_column(String(8))
    # What the logger reports about itself (ingest/hj212, written by the writer): the field
    # deviations of standards.md §1.11 it was seen to send (catalogue.HJ212_DEVIATIONS), the
    # RtdInterval it answered to a 1061 request (beside interval_s, which wins), and its
    # last 2021 equipment status {"SB1": {"RS": 1, "RT": 12.5}} at that status's DataTime
    hj212_deviations: Mapped[list[str] | None] = mapped_column()
    hj212_rtd_interval_s: Mapped[int | None] = mapped_column(Integer)
    hj212_equipment: Mapped[dict[str, Any] | None] = mapped_column()
    hj212_equipment_at: Mapped[datetime | None] = mapped_column()


class Role(StrEnum):
    admin = "admin"  # devices, sites, rules, users; every district
    inspector = "inspector"  # read, acknowledge, resolve, comment within scope
    viewer = "viewer"  # read within scope


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    # None = every district (admins, city-wide inspectors)
    district: Mapped[str | None] = mapped_column(String(100))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A bearer token, stored only as a SHA-256 hash (the token is 32 random bytes, so a slow
    password hash buys nothing); `prefix` finds the row without revealing the secret."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(100))
    demo: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class AuthEpoch(Base):
    """One row whose `epoch` moves on every change to users or keys (database triggers, so a
    hand-written UPDATE counts too): API workers cache principals while it stands still."""

    __tablename__ = "auth_epochs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(Integer, default=0)


class Reading(Base):
    """One value of one metric from one device at one event time; arrival time beside it."""

    __tablename__ = "readings"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    ts: Mapped[datetime] = mapped_column(primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    quality: Mapped[str] = mapped_column(String(1), default="N")
    received_at: Mapped[datetime] = mapped_column()

    __table_args__ = (
        Index("ix_readings_ts", "ts"),
        # PostgreSQL: the leak meters' N-flagged flow, pressure and totaliser with their
        # values, for index-only reads of the DMA days and the burst rule (migration 0018)
        Index(
            "ix_readings_dma",
            "device_id",
            "metric",
            "ts",
            postgresql_include=["value"],
            postgresql_where=text("quality = 'N' AND metric IN ('flow', 'pressure', 'totaliser')"),
        ).ddl_if(dialect="postgresql"),
    )


class HourlyRollup(Base):
    """Hourly count/sum/min/max per device and metric over readings flagged N (UTC hours)."""

    __tablename__ = "hourly_rollups"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    sum: Mapped[float] = mapped_column(Float)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)

    # PostgreSQL: the values in the key's index too (migration 0014), so a series' hours
    # are read by an index-only scan from a few adjacent pages, not one heap page per hour
    __table_args__ = (
        PrimaryKeyConstraint(
            "device_id",
            "metric",
            "hour",
            name="pk_hourly_rollups",
            postgresql_include=["count", "sum", "min", "max"],
        ),
    )


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    topic: Mapped[str] = mapped_column(Text)
    device_id: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    # sha256 of what the dead letter says: a redelivered message is not kept twice
    digest: Mapped[str | None] = mapped_column(String(64), unique=True)


class Rule(Base):
    __tablename__ = "rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    pack: Mapped[str | None] = mapped_column(String(64))
    device_kind: Mapped[str] = mapped_column(String(32))
    site_kinds: Mapped[list[str] | None] = mapped_column()
    site_ids: Mapped[list[str] | None] = mapped_column()
    device_ids: Mapped[list[str] | None] = mapped_column()
    metric: Mapped[str] = mapped_column(String(32))
    aggregate: Mapped[str] = mapped_column(String(16), default=Aggregate.raw)
    window_s: Mapped[int] = mapped_column(Integer, default=0)
    min_samples: Mapped[int] = mapped_column(Integer, default=1)
    warn_below: Mapped[float | None] = mapped_column(Float)
    warn_above: Mapped[float | None] = mapped_column(Float)
    alarm_below: Mapped[float | None] = mapped_column(Float)
    alarm_above: Mapped[float | None] = mapped_column(Float)
    for_s: Mapped[int] = mapped_column(Integer, default=0)
    auto_resolve: Mapped[bool] = mapped_column(Boolean, default=True)
    quiet_s: Mapped[int] = mapped_column(Integer, default=600)
    kind: Mapped[str] = mapped_column(String(20), default=RuleKind.threshold)
    # type-specific settings of the non-threshold kinds (see alerts/schemas.py)
    params: Mapped[dict[str, Any] | None] = mapped_column()
    # hysteresis: an open alert clears only once the value is back past these
    clear_above: Mapped[float | None] = mapped_column(Float)
    clear_below: Mapped[float | None] = mapped_column(Float)
    # local-time window the rule is active in, "HH:MM" (22:00-06:00 wraps midnight)
    active_from: Mapped[str | None] = mapped_column(String(5))
    active_to: Mapped[str | None] = mapped_column(String(5))
    site_districts: Mapped[list[str] | None] = mapped_column()
    basis: Mapped[str] = mapped_column(Text, default="")
    legal_limit: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("rules.id", ondelete="CASCADE"), index=True)
    # the subject: a device, or (device_id null) a site, as a DMA's leakage rules judge it
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id"), index=True)
    # the subject's site (a device alert: its device's site when it opened): scope, exports
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=AlertStatus.firing)
    severity: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column()
    fired_at: Mapped[datetime] = mapped_column(index=True)
    last_violation_at: Mapped[datetime] = mapped_column()
    # Event time up to which the evaluator has folded readings into this alert: a reading at or
    # before it (a redelivery, a late arrival) is not counted again.
    evaluated_until: Mapped[datetime] = mapped_column()
    # Event time since which the condition has been clear; resolves after the rule's quiet_s.
    clear_since: Mapped[datetime | None] = mapped_column()
    last_value: Mapped[float] = mapped_column(Float)
    peak_value: Mapped[float] = mapped_column(Float)
    violations: Mapped[int] = mapped_column(Integer, default=1)
    message: Mapped[str] = mapped_column(Text)
    assignee: Mapped[str | None] = mapped_column(String(100))
    # opened during a maintenance window: kept as evidence, not notified
    suppressed: Mapped[bool] = mapped_column(Boolean, default=False)
    acknowledged_at: Mapped[datetime | None] = mapped_column()
    # event time: the step that resolved it, or (an inspector's resolve) how far it had got
    resolved_at: Mapped[datetime | None] = mapped_column()
    # "system:evaluator" or the inspector; a person's resolve is final for the evaluator
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    # bumped by every change; a writer that read an older version retries (lifecycle.py)
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        # One open alert per (rule, device), enforced by the database itself.
        Index(
            "uq_alerts_open_rule_device",
            "rule_id",
            "device_id",
            unique=True,
            sqlite_where=text("status NOT IN ('resolved', 'retracted')"),
            postgresql_where=text("status NOT IN ('resolved', 'retracted')"),
        ),
        # and one per (rule, site) for the alerts whose subject is a site
        Index(
            "uq_alerts_open_rule_site",
            "rule_id",
            "site_id",
            unique=True,
            sqlite_where=text("device_id IS NULL AND status NOT IN ('resolved', 'retracted')"),
            postgresql_where=text("device_id IS NULL AND status NOT IN ('resolved', 'retracted')"),
        ),
    )


class AlertEvent(Base):
    __tablename__ = "alert_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(Text)
    severity: Mapped[str | None] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Float)


class MaintenanceWindow(Base):
    """Planned work on a device or a whole site: alerts opened in it are marked suppressed."""

    __tablename__ = "maintenance_windows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id"), index=True)
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id"), index=True)
    starts_at: Mapped[datetime] = mapped_column()
    ends_at: Mapped[datetime] = mapped_column()
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Notification(Base):
    """The outbox: written in the transaction that changes an alert, sent after commit."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[int] = mapped_column(
        ForeignKey("alert_events.id", ondelete="CASCADE"), unique=True
    )
    site_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default=NotificationStatus.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    sent_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Who changed which configuration, when: sites, devices, credentials, users, keys, rules,
    maintenance windows. The actor is always the authenticated principal."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50))
    object: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any] | None] = mapped_column()


class Consumption(Base):
    """Registered consumption (注册用户用水量) of a DMA or supply area over one billing period."""

    __tablename__ = "consumption"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    period_start: Mapped[date] = mapped_column(Date)  # local dates, both inclusive
    period_end: Mapped[date] = mapped_column(Date)
    billed_m3: Mapped[float] = mapped_column(Float)
    unbilled_m3: Mapped[float] = mapped_column(Float, default=0.0)
    # residential metered-to-household (抄表到户) volume: CJJ 92's R1
    residential_metered_m3: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DmaDay(Base):
    """A DMA's figures for one local day (alerts/leakage.py); recomputed when its data changes.
    An invalid day keeps its coverage and has null figures, never zeros."""

    __tablename__ = "dma_days"

    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    valid: Mapped[bool] = mapped_column(Boolean)
    coverage: Mapped[float] = mapped_column(Float)
    night_coverage: Mapped[float] = mapped_column(Float)
    night_use_m3h: Mapped[float] = mapped_column(Float)
    inlet_m3: Mapped[float | None] = mapped_column(Float)
    inlet_source: Mapped[str | None] = mapped_column(String(16))  # totaliser / slots
    mnf_m3h: Mapped[float | None] = mapped_column(Float)
    mnf_at: Mapped[datetime | None] = mapped_column()  # start of the MNF hour
    net_night_flow_m3h: Mapped[float | None] = mapped_column(Float)
    ndf_h: Mapped[float | None] = mapped_column(Float)
    leakage_m3: Mapped[float | None] = mapped_column(Float)
    leakage_pct: Mapped[float | None] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the day's defined 15-minute slots (net inflow defined: every inlet and outlet has a
    # value), whatever the day's validity, in slot order: their numbers from local midnight,
    # net inflow (inlets - outlets) and the mean pressure of the AZP meters (null where none);
    # empty lists when no slot is defined (null only on a row not written by
    # `alerts.dma.recompute_days`). Derived data, the burst rule's mean flow
    # (migration 0016 moved them here from one `dma_slots` row per slot).
    slot_index: Mapped[list[int] | None] = mapped_column(list_of(Integer))
    slot_net_m3h: Mapped[list[float] | None] = mapped_column(list_of(Float))
    slot_azp_mpa: Mapped[list[float | None] | None] = mapped_column(list_of(Float))
    net_mean_m3h: Mapped[float | None] = mapped_column(Float)  # of the defined slots


class DmaPending(Base):
    """A DMA day whose figures and site rules are owed: stored readings changed it, and the
    ingestor that stored them defers the recomputation while it is behind
    (`ENVMON_DMA_DEFER_S`). Written in the readings' transaction and deleted in the one that
    recomputes the day, so a crash in between leaves the mark for the next flush; any
    ingestor may take it. `since`: the earliest changed reading (its hour) of the site."""

    __tablename__ = "dma_pending"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64))
    day: Mapped[date] = mapped_column(Date)
    since: Mapped[datetime] = mapped_column()


def table(model: type[Base]) -> Table:
    """The Core table of a model, for bulk statements (typed, unlike `Model.__table__`)."""
    return cast(Table, model.__table__)
