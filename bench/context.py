"""What every stage shares: the plan, the broker, the database, the fleet, the work folder."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import Plan
from bench.fleet import Backlog, Device
from bench.services import Api, Database, Ingestor, pids_with_cmdline
from monitor.broker import EmbeddedBroker


@dataclass
class Context:
    plan: Plan
    workdir: Path
    db: Database
    broker: EmbeddedBroker
    stack: ExitStack
    fleet: list[Device]
    probes: list[Device]
    backlog: Backlog
    results: dict[str, Any] = field(default_factory=dict)
    _serial: int = 0

    @property
    def mqtt_url(self) -> str:
        return self.broker.url

    def broker_pids(self) -> list[int]:
        return pids_with_cmdline(str(self.broker.data_dir / "mosquitto.conf"))

    def next_id(self, stem: str) -> str:
        self._serial += 1
        return f"{stem}-{self._serial}"

    def ingestor(
        self, stem: str, shared_group: str | None = None, env: dict[str, str] | None = None
    ) -> Ingestor:
        """A new `envmon ingest` (not started) that the run stops whatever happens (`env`:
        settings of its own)."""
        name = self.next_id(stem)
        proc = Ingestor(
            name,
            database_url=self.db.url,
            mqtt_url=self.mqtt_url,
            client_id=f"bench-{name}",
            workdir=self.workdir,
            shared_group=shared_group,
            extra_env=env,
        )
        self.stack.callback(proc.stop)
        return proc

    def api(self) -> Api:
        proc = Api(database_url=self.db.url, workdir=self.workdir, workers=self.plan.api_workers)
        self.stack.callback(proc.stop)
        return proc
