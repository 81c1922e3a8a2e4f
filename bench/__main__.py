"""`python -m bench`: measure envmon against the machine's limit and a naive baseline."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from bench import apiload, dataset, live, soak, throughput, webload
from bench.config import PRESETS, Plan
from bench.context import Context
from bench.fleet import Backlog, build_fleet, make_backlog, parse_mix, probe_devices, register
from bench.progress import say, stage
from bench.report import goals, machine, render
from bench.services import BenchError, Database, free_port
from monitor.broker import EmbeddedBroker

STAGES = (
    "raw",
    "envmon",
    "rebuild",
    "naive",
    "hj212",
    "production",
    "shadow",
    "scaling",
    "profile",
    "live",
    "live-sustainable",
    "api",
    "api-open",  # right after api: it reuses api's dataset when api ran
    "web",
    "leakage",
)
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SUSTAINABLE_SHARE = 0.5
DEFAULT_PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

DESCRIPTION = """\
Benchmark envmon on this machine, in one run, against two references: the raw limit (a bare
paho subscriber that only counts messages) and a naive baseline (one INSERT per reading).

It starts its own Mosquitto on a free port and a throwaway PostgreSQL database
(bench_<random>, dropped at the end), runs the stages, stops everything (also on Ctrl-C),
prints a table on stdout and writes every figure as JSON. Progress goes to stderr.

stages: raw, envmon, naive (ingest throughput draining the same QoS 1 backlog); rebuild (the
envmon drain with kept rule state off, ENVMON_EVAL_CACHE=false); production
(the envmon drain again, into 7 days of history with rollups and open alerts); shadow (a
drain that also rebuilds every batch without the kept rule state and counts the alerts that
differ; goal 0); scaling
(1, 2, 4 ingestors on a $share subscription, then 2 and 4 with a sticky split: one topic prefix
per ingestor, devices assigned by hash); profile (py-spy on one ingestor; full runs,
or --profile); live (publish->commit and publish->alert-in-API latency at a fixed rate,
--rate); live-sustainable (the same at half the rate envmon drained at in this run);
api (p50/p99 of the alert list and a 30-day hourly query, 20 clients, big database);
api-open (the same endpoints in an open loop: Poisson arrivals at 100 requests/s, latency
from the scheduled send time; the api stage's database, built again if api was skipped);
web (p50/p99 of the inspectors' overview, alert list and alert pages, signed in, 4 clients,
100k alerts); hj212 (`envmon hj212` under N logger connections from client processes:
memory per idle connection, frame->9014 p50/p99 at a fixed rate, frames/s and readings/s in
a closed loop against the envmon stage's readings/s);
leakage (the DMA daily figures of 1,000 DMAs over 30 days of 5-minute data, set-based,
in 2 concurrent transactions, timed alone); soak (only with --soak MINUTES, and then
alone): the fleet at a steady rate with the API polled, each process's memory and the
database size over time.
"""

EPILOG = """\
modes:
  --smoke   tiny load, well under a minute: CI runs it so that the benchmark keeps working
  --quick   every figure in under 3 minutes; the API database is smaller (2M readings), the
            web stage's too (20k alerts)
  (none)    the full run of docs/benchmarks.md: 10M readings, 100k alerts, longer stages

exit status: 0 when every stage ran and nothing was lost (goals missed are not failures),
1 when a stage failed or lost messages, 2 on bad arguments, 130 on Ctrl-C.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny load, seconds (CI)")
    mode.add_argument("--quick", action="store_true", help="every figure in under 3 minutes")
    p.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="where to write the figures [bench/results/<timestamp>.json]",
    )
    p.add_argument(
        "--pg-admin",
        default=os.environ.get("ENVMON_BENCH_PG_ADMIN", DEFAULT_PG_ADMIN),
        metavar="URL",
        help="SQLAlchemy URL of a database to CREATE DATABASE from "
        "[env ENVMON_BENCH_PG_ADMIN, default %(default)s]",
    )
    g = p.add_argument_group("load (defaults depend on the mode)")
    g.add_argument("--devices", type=int, help="devices in the simulated fleet")
    g.add_argument(
        "--mix",
        help="fleet mix, kind=weight for dust, water, river, leak [dust=4,water=2,river=1,leak=3]",
    )
    g.add_argument("--backlog", type=int, metavar="N", help="messages in the throughput backlog")
    g.add_argument(
        "--sets-per-message",
        type=int,
        metavar="K",
        help="reading sets per message (K > 1: {'batch': [...]} messages) [1]",
    )
    g.add_argument(
        "--naive-messages", type=int, metavar="N", help="messages the naive baseline drains"
    )
    g.add_argument("--scale", help="ingestor process counts for the scaling stage [1,2,4]")
    g.add_argument("--scale-backlog", type=int, metavar="N", help="messages per scaling run")
    g.add_argument("--rate", type=float, help="offered load of the live stage, messages/s [5000]")
    g.add_argument("--live-seconds", type=float, help="length of the live stage")
    g.add_argument("--api-readings", type=int, help="readings in the API stage's database")
    g.add_argument("--api-alerts", type=int, help="alerts in the API stage's database")
    g.add_argument("--api-clients", type=int, help="concurrent API clients [20]")
    g.add_argument("--api-workers", type=int, help="`envmon api --workers` [2, one per core]")
    g.add_argument("--api-seconds", type=float, help="measured seconds per API endpoint")
    g.add_argument(
        "--api-open-rate", type=float, help="requests/s of the api-open stage's open loop [100]"
    )
    g.add_argument("--web-alerts", type=int, help="alerts in the web stage's database")
    g.add_argument("--web-clients", type=int, help="concurrent signed-in page clients [4]")
    g.add_argument("--web-seconds", type=float, help="measured seconds per page")
    g.add_argument(
        "--hj212-connections", type=int, help="logger connections of the hj212 stage [2000]"
    )
    g.add_argument(
        "--hj212-idle", type=int, help="idle logger connections for the memory figure [10000]"
    )
    g.add_argument("--hj212-rate", type=float, help="frames/s of the hj212 latency phase [1000]")
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--profile", action="store_true", help="run the py-spy stage (default: full)")
    prof.add_argument("--no-profile", action="store_true", help="skip the py-spy stage")
    p.add_argument(
        "--skip", default="", help=f"stages to leave out, comma-separated: {', '.join(STAGES)}"
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs) after the run")
    s = p.add_argument_group("soak (opt-in, never part of the full run)")
    s.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="run only the soak stage for MINUTES: the fleet at a steady rate, the API polled, "
        "each process's memory and the database size sampled over time",
    )
    s.add_argument("--soak-rate", type=float, default=500.0, help="messages/s [%(default)s]")
    s.add_argument(
        "--soak-sample", type=float, default=30.0, metavar="S", help="seconds between samples"
    )
    s.add_argument(
        "--soak-speed",
        type=float,
        default=1.0,
        metavar="K",
        help="event time runs K times faster than the clock, ending at the present, so the "
        "rules' 4-hour windows fill in 4/K hours (each with K times fewer readings) "
        "[%(default)s]",
    )
    args = p.parse_args(argv)
    if args.soak is not None and args.soak <= 0:
        p.error("--soak needs a positive number of minutes")
    if args.soak_speed < 1:
        p.error("--soak-speed must be at least 1")
    unknown = {s for s in args.skip.split(",") if s} - set(STAGES)
    if unknown:
        p.error(f"unknown stage(s) in --skip: {', '.join(sorted(unknown))}")
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    base = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    changes: dict[str, Any] = {}
    for arg, name in (
        ("devices", "devices"),
        ("backlog", "backlog_messages"),
        ("sets_per_message", "sets_per_message"),
        ("naive_messages", "naive_messages"),
        ("scale_backlog", "scale_messages"),
        ("rate", "live_rate"),
        ("live_seconds", "live_seconds"),
        ("api_readings", "api_readings"),
        ("api_alerts", "api_alerts"),
        ("api_clients", "api_clients"),
        ("api_workers", "api_workers"),
        ("api_seconds", "api_seconds"),
        ("api_open_rate", "api_open_rate"),
        ("web_alerts", "web_alerts"),
        ("web_clients", "web_clients"),
        ("web_seconds", "web_seconds"),
        ("hj212_connections", "hj212_connections"),
        ("hj212_idle", "hj212_idle_connections"),
        ("hj212_rate", "hj212_rate"),
    ):
        value = getattr(args, arg)
        if value is not None:
            changes[name] = value
    if args.mix:
        changes["mix"] = parse_mix(args.mix)
    if args.scale:
        changes["scale"] = tuple(int(x) for x in args.scale.split(","))
    if args.profile:
        changes["profile"] = True
    if args.no_profile:
        changes["profile"] = False
    return replace(base, **changes)


def _on_sigterm(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = make_plan(args)
    except ValueError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = datetime.now(UTC)
    json_path: Path = args.json or RESULTS_DIR / f"{started:%Y%m%d-%H%M%S}-{plan.mode}.json"
    skip = {s for s in args.skip.split(",") if s}
    if args.soak:
        skip |= set(STAGES)  # the soak runs alone
    if not plan.profile:
        skip.add("profile")
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "machine": machine(),
        "stage_seconds": {},
        "failures": [],
        "json_path": str(json_path),
    }
    t0 = time.monotonic()
    interrupted = False
    try:
        _run(plan, args, skip, results)
    except KeyboardInterrupt:
        interrupted = True
        results["failures"].append("interrupted")
        say("interrupted; everything started has been stopped")
    except BenchError as exc:
        results["failures"].append(f"setup: {exc}")
        say(f"setup failed: {exc}")
    results["elapsed_s"] = time.monotonic() - t0
    results["goals"] = goals(results)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2, default=str))
    print(render(results))
    if interrupted:
        return 130
    return 1 if results["failures"] else 0


def _run(plan: Plan, args: argparse.Namespace, skip: set[str], results: dict[str, Any]) -> None:
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="envmon-bench-"))
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, True)
        else:
            say(f"work folder (kept): {workdir}")
        with stage("setup"):
            broker = EmbeddedBroker(workdir / "broker", free_port())
            broker.start()
            stack.callback(broker.stop)
            db = Database(args.pg_admin)
            stack.callback(db.drop)
            db.create()
            fleet = build_fleet(plan.devices, plan.mix)
            # each alert probe opens a new alert, so each needs its own device
            probes = probe_devices(2 * (int(plan.live_seconds * 5) + 20))
            register(db.dsn, fleet + probes)
            backlog = make_backlog(
                fleet,
                messages=plan.backlog_messages,
                sets_per_message=plan.sets_per_message,
                interval_s=plan.interval_s,
                end=datetime.now(UTC),
            )
        say(
            f"broker 127.0.0.1:{broker.port}, database {db.name}, {len(fleet):,} devices, "
            f"backlog {len(backlog.messages):,} messages / {backlog.readings:,} readings"
        )
        results["fleet"] = {
            "devices": len(fleet),
            "mix": ", ".join(f"{k} {v / sum(plan.mix.values()):.0%}" for k, v in plan.mix.items()),
            "backlog_messages": len(backlog.messages),
            "backlog_readings": backlog.readings,
            "readings_per_message": backlog.readings / len(backlog.messages),
            "payload_bytes_mean": sum(len(p) for _, p in backlog.messages) / len(backlog.messages),
        }
        ctx = Context(plan, workdir, db, broker, stack, fleet, probes, backlog)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("raw", lambda: _store_drain(results, "raw", throughput.raw_limit(ctx))),
            (
                "envmon",
                lambda: _store_drain(
                    results, "envmon", throughput.envmon(ctx, 1, backlog, label="envmon")
                ),
            ),
            (
                "rebuild",
                lambda: _store_drain(
                    results,
                    "rebuild",
                    throughput.envmon(
                        ctx, 1, backlog, label="rebuild", env={"ENVMON_EVAL_CACHE": "false"}
                    ),
                ),
            ),
            ("naive", lambda: _store_drain(results, "naive", throughput.naive_baseline(ctx))),
            ("hj212", lambda: _hj212(ctx, results)),
            ("production", lambda: _production(ctx, results)),
            ("shadow", lambda: _shadow(ctx, results)),
            ("scaling", lambda: _scaling(ctx, results)),
            ("profile", lambda: _profile(ctx, results)),
            ("live", lambda: _live(ctx, results)),
            ("live-sustainable", lambda: _live_sustainable(ctx, results)),
            ("api", lambda: _api(ctx, results)),
            ("api-open", lambda: _api_open(ctx, results)),
            ("web", lambda: _web(ctx, results)),
            ("leakage", lambda: _leakage(ctx, results)),
        ]
        if args.soak:
            steps.append(("soak", lambda: _soak(ctx, args, results)))
        for name, step in steps:
            if name in skip:
                continue
            started = time.monotonic()
            try:
                with stage(name):
                    step()
            except BenchError as exc:
                results["failures"].append(f"{name}: {exc}")
                say(f"{name} failed: {exc}")
            except Exception as exc:
                results["failures"].append(f"{name}: {type(exc).__name__}: {exc}")
                traceback.print_exc()
            results["stage_seconds"][name] = round(time.monotonic() - started, 1)
            _ratios(results)
        with stage("teardown"):
            stack.close()


def _store_drain(results: dict[str, Any], key: str, drain: throughput.Drain) -> None:
    results.setdefault("throughput", {})[key] = drain.as_dict()
    if drain.lost:
        raise BenchError(f"{key}: {drain.lost:,} readings/messages published but not stored")
    say(f"{key}: {drain.msg_rate:,.0f} msg/s, {drain.readings_rate:,.0f} readings/s, nothing lost")


def _ratios(results: dict[str, Any]) -> None:
    t = results.get("throughput", {})
    ratios: dict[str, float] = {}
    if "envmon" in t and "raw" in t:
        ratios["envmon_over_raw"] = t["envmon"]["msg_per_s"] / t["raw"]["msg_per_s"]
    if "envmon" in t and "naive" in t:
        ratios["envmon_over_naive"] = t["envmon"]["msg_per_s"] / t["naive"]["msg_per_s"]
    if "production" in t and "raw" in t:
        ratios["envmon_over_raw_production"] = t["production"]["msg_per_s"] / t["raw"]["msg_per_s"]
    if "envmon" in t and "rebuild" in t:
        # what kept rule state buys: the same drain with every pair rebuilt each batch
        ratios["kept_over_rebuild"] = t["envmon"]["msg_per_s"] / t["rebuild"]["msg_per_s"]
    results["ratios"] = ratios


def _hj212(ctx: Context, results: dict[str, Any]) -> None:
    from bench import hj212load

    mqtt = results.get("throughput", {}).get("envmon", {}).get("readings_per_s")
    results["hj212"] = hj212load.run(ctx, mqtt)


def _backlog_start(backlog: Backlog) -> datetime:
    """The earliest event time in the backlog (its first round)."""
    doc = orjson.loads(backlog.messages[0][1])
    first = doc["batch"][0] if "batch" in doc else doc
    return datetime.fromisoformat(str(first["ts"]))


def _production(ctx: Context, results: dict[str, Any]) -> None:
    """The envmon drain of the same backlog, into a database in production state: 7 days of
    history up to the backlog's first event time, hourly rollups, event-time watermarks and
    open alerts 1-10 days old on 1% of the (rule, device) pairs."""
    plan = ctx.plan
    ctx.db.reset_data()
    start = _backlog_start(ctx.backlog)
    ds = dataset.build(
        ctx.db,
        ctx.fleet,
        readings=plan.production_readings,
        alerts=0,
        days=plan.production_days,
        step_s=plan.production_step_s,
        end=start,
    )
    opened = dataset.production_state(
        ctx.db, ctx.fleet, ds, open_share=plan.production_open_share, at=start
    )
    say(
        f"production state: {ds.readings:,} readings of {len(ds.devices):,} devices over "
        f"{plan.production_days} days, {ds.rollups:,} rollups, {opened:,} open alerts, "
        f"in {ds.seconds:.0f} s"
    )
    results["production"] = {
        "readings": ds.readings,
        "devices_with_history": len(ds.devices),
        "rollups": ds.rollups,
        "open_alerts": opened,
        "days": plan.production_days,
        "step_s": plan.production_step_s,
        "history_end": ds.end.isoformat(),
        "build_s": ds.seconds,
    }
    try:
        drain = throughput.envmon(ctx, 1, ctx.backlog, label="production", fresh=False)
        _store_drain(results, "production", drain)
    finally:
        ctx.db.reset_data()


def _shadow(ctx: Context, results: dict[str, Any]) -> None:
    """The kept rule state checked against the rebuild: a drain with ENVMON_EVAL_SHADOW on,
    in which every batch's pairs are also rebuilt from the database without the kept state
    (in a savepoint rolled back) and the alerts that come out different are counted."""
    backlog = ctx.backlog
    if ctx.plan.scale_messages < len(backlog.messages):
        backlog = backlog.head(ctx.plan.scale_messages)
    drain = throughput.envmon(ctx, 1, backlog, label="shadow", env={"ENVMON_EVAL_SHADOW": "true"})
    x = drain.extra
    results["shadow"] = {
        "messages": drain.messages,
        "readings": drain.readings,
        "lost": drain.lost,
        "pairs_folded": x["eval_pairs_hit"],
        "pairs_rebuilt": x["eval_pairs_miss"],
        "mismatches": x["shadow_mismatches"],
        "alerts": ctx.db.scalar("SELECT count(*) FROM alerts"),
    }
    if drain.lost:
        raise BenchError(f"shadow: {drain.lost:,} readings not stored")
    say(
        f"shadow: {x['eval_pairs_hit']:,} pairs folded from kept state, "
        f"{x['eval_pairs_miss']:,} rebuilt, {x['shadow_mismatches']:,} mismatches"
    )


def _scaling(ctx: Context, results: dict[str, Any]) -> None:
    backlog = ctx.backlog
    if ctx.plan.scale_messages < len(backlog.messages):
        backlog = backlog.head(ctx.plan.scale_messages)
    # arrivals interleaved as a live fleet's are, so that the round robin scatters devices
    backlog = backlog.each_round_shuffled(len(ctx.fleet))
    out: dict[str, Any] = {}
    results["scaling"] = out
    for n in ctx.plan.scale:
        drain = throughput.envmon(ctx, n, backlog, label=f"scale-{n}")
        out[str(n)] = drain.as_dict()
        if drain.lost:
            raise BenchError(f"scaling with {n}: {drain.lost:,} readings not stored")
        say(f"scaling: {n} process(es): {drain.msg_rate:,.0f} msg/s")
    # the same with a sticky split (each device to one ingestor, as EMQX's hash_topic
    # strategy routes), emulated with one topic prefix per ingestor: kept rule state stays
    # warm, where the round robin above makes a device's pairs rebuild whenever its message
    # lands on another ingestor than its last one
    sticky: dict[str, Any] = {}
    results["scaling_sticky"] = sticky
    for n in ctx.plan.scale:
        if n < 2:
            continue
        split, prefixes = throughput.sticky_backlog(backlog, n)
        drain = throughput.envmon(ctx, n, split, label=f"sticky-{n}", prefixes=prefixes)
        sticky[str(n)] = drain.as_dict()
        if drain.lost:
            raise BenchError(f"sticky scaling with {n}: {drain.lost:,} readings not stored")
        say(f"scaling, sticky split: {n} processes: {drain.msg_rate:,.0f} msg/s")


def _profile(ctx: Context, results: dict[str, Any]) -> None:
    from bench import profiling

    if profiling.py_spy() is None:
        say("profile: py-spy not installed (pip install py-spy); skipped")
        results["profile"] = {"skipped": "py-spy not installed"}
        return
    backlog = ctx.backlog
    if ctx.plan.profile_messages < len(backlog.messages):
        backlog = backlog.head(ctx.plan.profile_messages)
    prefix = ctx.workdir / "profile"
    drain = throughput.envmon(ctx, 1, backlog, label="profile", profile_to=prefix)
    cpu = profiling.summarize(prefix.with_name("profile-cpu.txt"))
    wall = profiling.summarize(prefix.with_name("profile-wall.txt"))
    json_path = Path(results["json_path"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    for view in ("cpu", "wall"):
        src = prefix.with_name(f"profile-{view}.txt")
        if src.exists():
            shutil.copy(src, json_path.with_name(f"{json_path.stem}-profile-{view}.txt"))
    results["profile"] = {
        "msg_per_s_while_profiled": drain.msg_rate,
        "rate_hz": profiling.RATE_HZ,
        "cpu": cpu,
        "wall": wall,
    }


def _live(ctx: Context, results: dict[str, Any]) -> None:
    half = len(ctx.probes) // 2
    results["live"] = live.run(ctx, ctx.plan.live_rate, ctx.probes[:half])


def _live_sustainable(ctx: Context, results: dict[str, Any]) -> None:
    """The same at half the rate envmon sustained in this run's drain: latency where it
    keeps up (the goal's load may be beyond it)."""
    drained = results.get("throughput", {}).get("envmon", {}).get("msg_per_s")
    if not drained:
        say("live-sustainable: needs the envmon stage's rate; skipped")
        return
    rate = min(ctx.plan.live_rate, round(drained * SUSTAINABLE_SHARE))
    half = len(ctx.probes) // 2
    results["live_sustainable"] = live.run(ctx, rate, ctx.probes[half:])


def _soak(ctx: Context, args: argparse.Namespace, results: dict[str, Any]) -> None:
    results["soak"] = soak.run(ctx, args.soak, args.soak_rate, args.soak_sample, args.soak_speed)


# the api stage's dataset while it is still in the database (api-open comes right after api)
_api_dataset: dict[str, dataset.Dataset] = {}


def _build_api_dataset(ctx: Context) -> dataset.Dataset:
    plan = ctx.plan
    _api_dataset.clear()
    ctx.db.reset_data()
    ds = dataset.build(
        ctx.db,
        ctx.fleet,
        readings=plan.api_readings,
        alerts=plan.api_alerts,
        days=plan.api_days,
        step_s=plan.api_step_s,
    )
    say(
        f"api dataset: {ds.readings:,} readings of {len(ds.devices)} devices, {ds.rollups:,} "
        f"rollups, {ds.alerts:,} alerts in {ds.seconds:.0f} s"
    )
    _api_dataset["ds"] = ds
    return ds


def _api_dataset_dict(ds: dataset.Dataset, plan: Plan, hourly_items: int) -> dict[str, Any]:
    return {
        "readings": ds.readings,
        "devices": len(ds.devices),
        "rollups": ds.rollups,
        "alerts": ds.alerts,
        "days": plan.api_days,
        "step_s": plan.api_step_s,
        "build_s": ds.seconds,
        "hourly_items_per_answer": hourly_items,
    }


def _api(ctx: Context, results: dict[str, Any]) -> None:
    plan = ctx.plan
    ds = _build_api_dataset(ctx)
    api = ctx.api()
    api.start()
    api.wait_ready()
    try:
        hourly_items = apiload.check_hourly(api, ctx.db.api_token, ds)
        endpoints = apiload.run(ctx.db, api, ds, clients=plan.api_clients, seconds=plan.api_seconds)
    finally:
        api.stop()
    results["api"] = {
        "clients": plan.api_clients,
        "workers": plan.api_workers,
        "reduced": plan.api_reduced,
        "dataset": _api_dataset_dict(ds, plan, hourly_items),
        "endpoints": endpoints,
    }


def _api_open(ctx: Context, results: dict[str, Any]) -> None:
    """The api stage's endpoints in an open loop at a fixed rate (issue 14's latency goal)."""
    plan = ctx.plan
    ds = _api_dataset.pop("ds", None) or _build_api_dataset(ctx)
    api = ctx.api()
    api.start()
    api.wait_ready()
    try:
        hourly_items = apiload.check_hourly(api, ctx.db.api_token, ds)
        endpoints = apiload.run_open(
            ctx.db, api, ds, rate=plan.api_open_rate, seconds=plan.api_open_seconds
        )
    finally:
        api.stop()
    results["api_open"] = {
        "rate_per_s": plan.api_open_rate,
        "seconds": plan.api_open_seconds,
        "arrivals": "poisson",
        "workers": plan.api_workers,
        "reduced": plan.api_reduced,
        "dataset": _api_dataset_dict(ds, plan, hourly_items),
        "endpoints": endpoints,
    }
    for name, e in endpoints.items():
        say(f"api-open {name}: p50 {e['p50_ms']:.1f} ms, p99 {e['p99_ms']:.1f} ms")


def _leakage(ctx: Context, results: dict[str, Any]) -> None:
    """DMA daily figures for many DMAs over many days (issue 12), timed alone."""
    from bench import leakage

    plan = ctx.plan
    results["leakage"] = leakage.run(ctx.db, dmas=plan.leakage_dmas, days=plan.leakage_days)


def _web(ctx: Context, results: dict[str, Any]) -> None:
    """The inspectors' pages over a database of many alerts (the api stage's loader, with
    fewer readings: the pages read alerts, and only an alert's hour of readings)."""
    plan = ctx.plan
    ctx.db.reset_data()
    ds = dataset.build(
        ctx.db,
        ctx.fleet,
        readings=plan.web_readings,
        alerts=plan.web_alerts,
        days=plan.api_days,
        step_s=plan.api_step_s,
    )
    say(f"web dataset: {ds.readings:,} readings, {ds.alerts:,} alerts in {ds.seconds:.0f} s")
    api = ctx.api()
    api.start()
    api.wait_ready()
    try:
        pages = webload.run(
            ctx.db, api, alerts=ds.alerts, clients=plan.web_clients, seconds=plan.web_seconds
        )
    finally:
        api.stop()
    results["web"] = {
        "clients": plan.web_clients,
        "workers": plan.api_workers,
        "reduced": plan.web_reduced,
        "dataset": {"readings": ds.readings, "alerts": ds.alerts, "build_s": ds.seconds},
        "pages": pages,
    }
    for name, page in pages.items():
        say(f"web {name}: p50 {page['p50_ms']:.1f} ms, p99 {page['p99_ms']:.1f} ms")


if __name__ == "__main__":
    sys.exit(main())
