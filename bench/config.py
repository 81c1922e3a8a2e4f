"""The sizes of a run: three presets (smoke, quick, full) that command-line options adjust."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.fleet import DEFAULT_MIX


@dataclass
class Plan:
    mode: str
    devices: int
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    # throughput: a backlog of this many messages, drained by each consumer in turn
    backlog_messages: int = 100_000
    sets_per_message: int = 1
    interval_s: float = 10.0
    naive_messages: int = 4_000
    scale: tuple[int, ...] = (1, 2, 4)
    scale_messages: int = 60_000
    # live: a paced publisher, commit latency of every message, alert probes
    live_rate: float = 5_000.0
    live_seconds: float = 20.0
    live_warmup_s: float = 3.0
    # after the publisher stops, how long the ingestor may take to store what it still holds
    live_catchup_s: float = 30.0
    # API: a 30-day dataset, then 20 clients in a closed loop
    api_readings: int = 2_000_000
    api_alerts: int = 20_000
    api_days: int = 30
    api_step_s: int = 600
    api_clients: int = 20
    api_workers: int = 2  # `envmon api --workers`: one per core of this machine
    api_seconds: float = 5.0
    # api-open: the same endpoints at a fixed offered rate (issue 14: 100 requests/s, p99 goal)
    api_open_rate: float = 100.0
    api_open_seconds: float = 10.0
    # web: the inspectors' pages, a few signed-in clients, many alerts (issue 13: 100k)
    web_readings: int = 1_000_000
    web_alerts: int = 100_000
    web_clients: int = 4
    web_seconds: float = 10.0
    # leakage: DMA daily figures (issue 12: 1,000 DMAs over 30 days of 5-minute data)
    leakage_dmas: int = 1_000
    leakage_days: int = 30
    profile: bool = False
    profile_messages: int = 60_000
    # hj212: logger connections (each its own MN) in client processes beside the gateway
    hj212_connections: int = 2_000
    hj212_idle_connections: int = 10_000
    hj212_clients: int = 4
    hj212_rate: float = 1_000.0  # frames/s of the latency phase
    hj212_paced_s: float = 20.0
    hj212_saturate_s: float = 20.0
    # production: the envmon drain again, into a database with history: this many readings at
    # most (7 days at 10-minute readings for as many fleet devices as fit), their hourly
    # rollups, and open alerts on this share of (rule, device) pairs, 1-10 days old
    production_readings: int = 3_000_000
    production_days: int = 7
    production_step_s: int = 600
    production_open_share: float = 0.01

    @property
    def api_reduced(self) -> bool:
        """Whether the API dataset is below the issue's 10M readings / 100k alerts."""
        return self.api_readings < 10_000_000 or self.api_alerts < 100_000

    @property
    def web_reduced(self) -> bool:
        """Whether the web stage's database holds fewer than issue 13's 100k alerts."""
        return self.web_alerts < 100_000


PRESETS: dict[str, Plan] = {
    "smoke": Plan(
        mode="smoke",
        devices=100,
        backlog_messages=2_000,
        naive_messages=200,
        scale_messages=2_000,
        live_rate=300.0,
        live_seconds=5.0,
        live_warmup_s=1.0,
        api_readings=100_000,
        api_alerts=1_000,
        api_seconds=1.5,
        api_open_rate=50.0,
        api_open_seconds=1.5,
        web_readings=50_000,
        web_alerts=1_000,
        web_seconds=1.5,
        profile_messages=2_000,
        hj212_connections=100,
        hj212_idle_connections=300,
        hj212_clients=2,
        hj212_rate=100.0,
        hj212_paced_s=2.0,
        hj212_saturate_s=2.0,
        production_readings=50_000,
        leakage_dmas=5,
        leakage_days=3,
    ),
    "quick": Plan(
        mode="quick",
        devices=5_000,
        backlog_messages=25_000,
        naive_messages=3_000,
        scale_messages=10_000,
        live_rate=5_000.0,
        live_seconds=12.0,
        live_warmup_s=2.0,
        live_catchup_s=10.0,
        api_readings=2_000_000,
        api_alerts=20_000,
        api_seconds=3.0,
        web_readings=200_000,
        web_alerts=20_000,
        web_seconds=3.0,
        profile_messages=15_000,
        hj212_paced_s=8.0,
        hj212_saturate_s=8.0,
        production_readings=3_000_000,
        leakage_dmas=100,
        leakage_days=30,
    ),
    "full": Plan(
        mode="full",
        devices=10_000,
        backlog_messages=150_000,
        naive_messages=10_000,
        scale_messages=40_000,
        live_rate=5_000.0,
        live_seconds=60.0,
        live_warmup_s=5.0,
        live_catchup_s=60.0,
        api_readings=10_000_000,
        api_alerts=100_000,
        api_seconds=20.0,
        api_open_seconds=30.0,
        profile=True,
        profile_messages=40_000,
        production_readings=20_000_000,
    ),
}
