"""The MQTT payload contract, defined once: devices/ publishes with it, ingest/ validates with it.

Topic:   {prefix}/v1/devices/{device_id}/telemetry     (prefix defaults to "envmon")
Payload: {"ts": "2026-11-25T08:00:00+08:00", "values": {"pm10": 82.1}, "flags": {"pm10": "N"}}
     or  {"batch": [<reading set>, ...]}
`ts` is ISO 8601 with a UTC offset, or epoch milliseconds. Units are fixed per metric by
`monitor.core.catalogue.METRICS`. docs/mqtt.md is the prose version of this module.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat

from monitor.core.catalogue import QualityFlag

API_VERSION = "v1"
TELEMETRY = "telemetry"
STATUS = "status"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


def _epoch_ms(value: Any) -> Any:
    # bool is an int in Python; `true` is never a timestamp.
    if isinstance(value, bool):
        raise ValueError("ts must be an ISO 8601 string with offset, or epoch milliseconds")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            # past the platform's time_t (1e20) the C library answers OSError/OverflowError
            raise ValueError(f"ts {value!r} ms is not a representable instant") from exc
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_epoch_ms)]


class ReadingSet(BaseModel):
    """Readings of several metrics taken by one device at one instant."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    ts: Timestamp = Field(description="Event time: ISO 8601 with offset, or epoch milliseconds")
    values: dict[str, StrictFloat] = Field(
        min_length=1, description="Metric name -> value in the catalogue's unit"
    )
    flags: dict[str, QualityFlag] = Field(
        default_factory=dict, description="HJ 212 data flag per metric; absent means N"
    )
    units: dict[str, str] = Field(
        default_factory=dict,
        description="Optional unit per metric; a unit other than the catalogue's is rejected",
    )


class TelemetryBatch(BaseModel):
    """Several reading sets in one message (a device uploading what it buffered)."""

    model_config = ConfigDict(extra="forbid")

    batch: list[ReadingSet] = Field(min_length=1)


def same_unit(given: str, expected: str) -> bool:
    """Unit names compared the way devices write them: `ug/m3` is `µg/m³`, case aside."""

    def norm(u: str) -> str:
        return u.lower().replace("µ", "u").replace("μ", "u").replace("³", "3").replace(" ", "")

    return norm(given) == norm(expected)


def marker_topic(prefix: str, client_id: str) -> str:
    """Where an ingestor publishes a note to itself after subscribing: when it comes back, the
    broker has delivered everything it held for the session before it (MQTT has no "caught
    up" signal of its own). Not a device topic, never under a shared group."""
    return f"{prefix}/v1/ingest/{client_id}/caught-up"


def topic_root(prefix: str) -> str:
    return f"{prefix}/{API_VERSION}/devices"


def telemetry_topic(prefix: str, device_id: str) -> str:
    return f"{topic_root(prefix)}/{device_id}/{TELEMETRY}"


def status_topic(prefix: str, device_id: str) -> str:
    return f"{topic_root(prefix)}/{device_id}/{STATUS}"


def parse_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """(device_id, channel) of a topic under our root, or None if it is not one of ours."""
    root = topic_root(prefix) + "/"
    if not topic.startswith(root):
        return None
    rest = topic[len(root) :].split("/")
    if len(rest) != 2 or not rest[0]:
        return None
    return rest[0], rest[1]


def encode(message: ReadingSet | TelemetryBatch) -> bytes:
    return message.model_dump_json(exclude_defaults=True).encode()
