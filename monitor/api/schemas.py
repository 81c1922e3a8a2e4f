"""API shapes (separate from the tables)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from monitor.core.catalogue import DmaRole
from monitor.registry import DmaFields, HJ212RulesFrom


class GatewayHealth(BaseModel):
    listening: bool = Field(description="The HJ 212 gateway accepts connections")
    port: int | None
    connections: int = Field(description="Open logger connections")


class Health(BaseModel):
    status: str = Field(description="ok, or degraded when a gateway of this process is down")
    database: str
    version: str
    timescaledb: bool
    hj212: GatewayHealth | None = Field(
        None,
        description="The HJ 212 gateway running in this process (envmon up); null when there "
        "is none here (envmon api: the gateway is `envmon hj212`, checked at its own port)",
    )


class SiteRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    district: str
    kind: str
    latitude: float | None
    longitude: float | None
    created_at: datetime
    connections: int | None = None
    mains_km: float | None = None
    night_from: str | None = None
    night_to: str | None = None
    night_use_l_per_conn_h: float | None = None
    special_night_use_m3h: float | None = None
    leakage_exponent: float | None = None


class SiteUpdate(DmaFields):
    """The keys given are changed; null clears a DMA parameter back to its default."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    district: str | None = Field(None, min_length=1, max_length=100)
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)


class DeviceRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    site_id: str
    kind: str
    name: str | None
    status: str
    district: str
    interval_s: int = Field(description="Seconds between the device's readings")
    last_seen_at: datetime | None
    online: bool = Field(
        description="Seen within the offline threshold and not offline by its last will"
    )
    connection: str | None = Field(description="online/offline as last said on its status topic")
    clock_skew_s: float | None = Field(
        description="Arrival minus event time of its newest reading, seconds (+ = late)"
    )
    created_at: datetime
    dma_role: str | None = Field(None, description="A leak meter's role in its DMA (null: inlet)")
    hj212_mn: str | None = Field(
        None, description="The HJ 212 data logger's MN, if the device speaks HJ 212 over TCP"
    )
    hj212_unit: str | None = Field(
        None, description="Unit of its HJ 212 particulate values (null: ug/m3)"
    )
    hj212_rules_from: str | None = Field(
        None,
        description="Which of its HJ 212 series the rules see: rtd (null), minute or hour",
    )
    hj212_deviations: list[str] | None = Field(
        None,
        description="The tolerated HJ 212 field deviations the logger was seen to send "
        "(docs/hj212.md, Tolerated and rejected)",
    )
    hj212_rtd_interval_s: int | None = Field(
        None,
        description="The RtdInterval the logger reported (1061); interval_s, the registered "
        "one, is what no-data, validity and online are measured against",
    )
    hj212_equipment: dict[str, dict[str, float]] | None = Field(
        None,
        description="The logger's last equipment status (2021): per equipment code, RS "
        "(0 off, 1 running, 2 calibrating, 3 maintenance, 4 alarm, 5 blowback) and RT (hours)",
    )
    hj212_equipment_at: datetime | None = Field(
        None, description="DataTime of that equipment status"
    )


class DeviceCreated(DeviceRead):
    mqtt_password: str | None = Field(
        description="The device's MQTT password (username = its id), issued when it had none. "
        "Shown this once; only a hash is kept."
    )


class DeviceCredentials(BaseModel):
    device_id: str
    mqtt_username: str
    mqtt_password: str = Field(description="Shown this once; the old password stops working")


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    status: str | None = Field(None, pattern="^(active|retired)$")
    interval_s: int | None = Field(
        None, ge=1, le=86_400, description="Seconds between the device's readings"
    )
    dma_role: DmaRole | None = Field(
        None, description="A leak meter's role in its DMA (null: inlet)"
    )
    hj212_rules_from: HJ212RulesFrom | None = Field(
        None,
        description="Which of its HJ 212 series the rules see: rtd (null: the default), "
        "minute or hour (docs/hj212.md)",
    )


class ReadingRead(BaseModel):
    device_id: str
    metric: str
    ts: datetime
    value: float
    unit: str
    quality: str
    received_at: datetime


class LatestRead(BaseModel):
    device_id: str
    readings: list[ReadingRead] = Field(
        description="Per metric, the reading with the newest event time (not the last to arrive)"
    )


class BucketRead(BaseModel):
    device_id: str
    metric: str
    hour: datetime
    unit: str
    mean: float
    min: float
    max: float
    count: int


class AlertRead(BaseModel):
    id: int
    rule_id: int
    rule_name: str
    device_id: str | None = Field(
        description="The device the alert is about; null when its subject is the site itself "
        "(a DMA's leakage rules)"
    )
    site_id: str = Field(description="The subject's site (a device alert: the device's site)")
    district: str
    device_kind: str
    metric: str
    status: str
    severity: str
    message: str
    started_at: datetime
    fired_at: datetime
    last_violation_at: datetime
    last_value: float
    peak_value: float
    violations: int
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    assignee: str | None
    suppressed: bool = Field(description="Opened during planned maintenance; not notified")
    basis: str


class ReadingPoint(BaseModel):
    ts: datetime
    value: float
    quality: str


class AlertEventRead(BaseModel):
    id: int
    at: datetime
    kind: str
    actor: str
    note: str | None
    severity: str | None
    value: float | None


class AlertDetail(AlertRead):
    events: list[AlertEventRead]
    readings: list[ReadingPoint] = Field(
        description="The rule's metric on the device from an hour before the alert started to "
        "an hour after its last violation (or resolution)"
    )


class AlertAction(BaseModel):
    """The actor is the authenticated caller, never a name from the body."""

    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(None, max_length=4000)


class DeadLetterRead(BaseModel):
    id: int
    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    payload: str


class RuleRead(BaseModel):
    id: int
    name: str
    description: str
    pack: str | None
    kind: str
    params: dict[str, Any] | None
    device_kind: str
    site_kinds: list[str] | None
    site_ids: list[str] | None
    site_districts: list[str] | None
    device_ids: list[str] | None
    metric: str
    aggregate: str
    window_s: int
    min_samples: int
    warn_above: float | None
    warn_below: float | None
    alarm_above: float | None
    alarm_below: float | None
    clear_above: float | None
    clear_below: float | None
    for_s: int
    quiet_s: int
    auto_resolve: bool
    active_from: str | None
    active_to: str | None
    basis: str
    legal_limit: bool
    enabled: bool
    updated_at: datetime
