"""The DMA daily figures on PostgreSQL: one statement for every (site, day) asked.

The same figures as alerts/leakage.py `day_figures` (the reference, which SQLite and the
property test tests/integration/test_dma_sql.py run), computed where the readings are:

- `day_fig`: per asked (site, day), one row of its figures from that day's readings alone.
  Its slots: for each of the site's flow and AZP meters an index range over the day, grouped
  into 15-minute means in memory (flow of inlets and outlets, pressure of AZP points,
  N-flagged readings only), then per slot the net inflow, defined only when every inlet and
  outlet has a mean, and the zone pressure (mean over AZP points). From those ~96 slots, in
  the same LATERAL: the defined slots counted, summed and as arrays in slot order; the MNF,
  the least mean of 4 consecutive defined slots wholly inside the night window (a window of
  4 rows whose last index is the first's + 3), the earliest on a tie, with the zone pressure
  over the same 4 slots (P_mnf); and NDF = Σ over the day's hours of (P_h / P_mnf)^N1, an
  hour without pressure counting 1. Each day is a small group of its own: no slot row leaves
  its day, so nothing sorts or hashes the call's million slots (docs/benchmarks.md,
  "index-only reads");
- the readings come from `ix_readings_dma` (migration 0018), whose entries carry the value:
  index-only scans, a meter's day on two or three adjacent leaf pages; the slot query names
  the index's metrics so the planner can prove its predicate;
- `tot` / `tot_mark` / `edge` / `bracket` / `drop_off` / `volume`: each inlet's and
  outlet's day volume from its totaliser. One pass over the readings finds, with lag and
  lead, the readings that follow a drop (rollover or reset, `unwrap_totaliser`'s rule) and
  the pair bracketing each midnight. The volume is the interpolated value at the day's end
  minus the one at its start on the unwrapped series: the two brackets' own values and
  fractions, plus the offsets of the drops between them. A bracket more than an hour wide
  gives no volume, like the reference (including its case of a reading exactly at midnight
  after a longer gap);
- the days written, one upsert: each day's figures and its defined slots as arrays in slot
  order (`slot_index`, the slot's number from local midnight; `slot_net_m3h`;
  `slot_azp_mpa`, null where no zone pressure; empty when none is defined) with their mean
  net inflow `net_mean_m3h` (the burst rule's mean flow), built in the same grouping that
  counts the day's defined slots: one row per day, no row per slot.

Floating-point sums run in another order than the reference's (`math.fsum`), so figures
agree to 1e-9 (what the property test checks), not bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from alerts.leakage import (
    MAX_TOTALISER_GAP_S,
    MIN_NIGHT_COVERAGE,
    MNF_RUN,
    ROLLOVER_NEAR,
    SLOT_S,
)
from monitor.core.db import pg_array


@dataclass(frozen=True, slots=True)
class AskedDay:
    site_id: str
    day: date
    start: datetime  # UTC instant of local midnight
    slots: int
    night_lo: int  # the night window's slots: [night_lo, night_hi)
    night_hi: int
    night_use_m3h: float  # LNC
    exponent: float  # N1


_SQL = f"""
WITH asked AS (
    SELECT a.*, a.t0 + a.slots * interval '{SLOT_S} seconds' AS t1
    FROM unnest(CAST(:a_site AS text[]), CAST(:a_day AS date[]), CAST(:a_t0 AS timestamptz[]),
                CAST(:a_slots AS int[]), CAST(:a_nlo AS int[]), CAST(:a_nhi AS int[]),
                CAST(:a_lnc AS float8[]), CAST(:a_n1 AS float8[]))
         AS a(site_id, day, t0, slots, night_lo, night_hi, lnc, n1)
),
meter AS (
    SELECT * FROM unnest(CAST(:m_dev AS text[]), CAST(:m_site AS text[]), CAST(:m_role AS text[]))
         AS m(device_id, site_id, role)
),
site_span AS (  -- the readings each site's days need
    SELECT site_id, min(t0) AS lo, max(t1) AS hi FROM asked GROUP BY site_id
),
site_meters AS (  -- per site, its flow and AZP meters in device order
    SELECT site_id, array_agg(device_id ORDER BY device_id) AS devs,
           array_agg(role ORDER BY device_id) AS roles,
           count(*) FILTER (WHERE role IN ('inlet', 'outlet')) AS flow_meters,
           coalesce(bool_or(role = 'inlet'), false) AS has_inlet
    FROM meter WHERE role IN ('inlet', 'outlet', 'azp') GROUP BY site_id
),
day_fig AS (  -- per asked day, from that day's readings alone: one row of its figures
    SELECT a.site_id, a.day, d.*
    FROM asked a
    JOIN site_meters sm ON sm.site_id = a.site_id
    CROSS JOIN LATERAL (
        WITH slot AS (  -- the day's slots in slot order
            SELECT e.slot_at, CAST(date_part('epoch', e.slot_at - a.t0) / {SLOT_S} AS int) AS i,
                   CASE WHEN sm.has_inlet
                         AND count(*) FILTER (WHERE e.role <> 'azp') = sm.flow_meters
                        THEN sum(CASE WHEN e.role = 'outlet' THEN -e.v ELSE e.v END)
                             FILTER (WHERE e.role <> 'azp')
                   END AS net,
                   avg(e.v) FILTER (WHERE e.role = 'azp') AS azp
            FROM unnest(sm.devs, sm.roles) AS mm(device_id, role)
            CROSS JOIN LATERAL (  -- one meter's slot means: an index range, grouped in memory
                SELECT mm.role, date_bin('{SLOT_S} seconds', ts, timestamptz 'epoch') AS slot_at,
                       avg(value) AS v
                FROM readings
                WHERE device_id = mm.device_id
                  -- names the metrics of ix_readings_dma, whose entries carry the value
                  AND metric IN ('flow', 'pressure')
                  AND metric = CASE WHEN mm.role = 'azp' THEN 'pressure' ELSE 'flow' END
                  AND ts >= a.t0 AND ts < a.t1 AND quality = 'N'
                GROUP BY 2
            ) e
            GROUP BY e.slot_at
            ORDER BY e.slot_at
        ),
        mnf AS (  -- the least mean of 4 consecutive defined night slots, the earliest on a tie
            SELECT r.i, r.slot_at, r.mean, r.p, r.p_sum
            FROM (
                SELECT i, slot_at, avg(net) OVER w AS mean, count(*) OVER w AS n,
                       last_value(i) OVER w AS last_i, avg(azp) OVER w AS p,
                       sum(azp) OVER w AS p_sum
                FROM slot
                WHERE net IS NOT NULL AND i >= a.night_lo AND i < a.night_hi
                WINDOW w AS (ORDER BY i ROWS BETWEEN CURRENT ROW AND {MNF_RUN - 1} FOLLOWING)
            ) r
            WHERE r.n = {MNF_RUN} AND r.last_i = r.i + {MNF_RUN - 1}
            ORDER BY r.mean, r.i
            LIMIT 1
        )
        SELECT c.*, m.mean AS mnf, m.slot_at AS mnf_at,
               CASE WHEN m.p IS NULL OR m.p_sum <= 0 THEN a.slots / 4
                    ELSE (SELECT a.slots / 4 - count(*) + coalesce(sum(power(h.p / m.p, a.n1)), 0)
                          FROM (SELECT avg(azp) AS p FROM slot WHERE azp IS NOT NULL
                                GROUP BY i / 4) h
                          WHERE h.p > 0)
               END AS ndf
        FROM (  -- the defined slots counted, summed and as arrays, in slot order as they come
            SELECT count(net) AS defined, sum(net) AS net_sum, avg(net) AS net_mean,
                   count(net) FILTER (WHERE i >= a.night_lo AND i < a.night_hi) AS night_defined,
                   array_agg(i) FILTER (WHERE net IS NOT NULL) AS slot_i,
                   array_agg(net) FILTER (WHERE net IS NOT NULL) AS slot_net,
                   array_agg(azp) FILTER (WHERE net IS NOT NULL) AS slot_azp
            FROM slot
        ) c
        LEFT JOIN mnf m ON true
    ) d
),
tot AS (  -- per meter: its readings in index order, the window needs no sort
    SELECT m.site_id, m.device_id, m.role, r.*
    FROM meter m
    JOIN site_span s ON s.site_id = m.site_id
    CROSS JOIN LATERAL (
        SELECT ts, value AS v, lag(ts) OVER w AS p_ts, lag(value) OVER w AS p_v,
               lead(ts) OVER w AS y_ts
        FROM readings
        WHERE device_id = m.device_id AND metric = 'totaliser' AND quality = 'N'
          AND ts >= s.lo - interval '{MAX_TOTALISER_GAP_S} seconds'
          AND ts < s.hi + interval '{MAX_TOTALISER_GAP_S} seconds'
        WINDOW w AS (ORDER BY ts)
    ) r
    WHERE m.role IN ('inlet', 'outlet')
),
tot_mark AS (  -- the readings after a drop, and the first at or after a day's edge
    SELECT t.*,
           CASE WHEN t.v >= t.p_v THEN 0.0
                WHEN t.p_v <= 0 THEN t.p_v
                ELSE CASE WHEN t.p_v >= {ROLLOVER_NEAR} * t.modulus THEN t.modulus ELSE t.p_v END
           END AS off,
           (CAST(:b_at AS timestamptz[]))[t.j] AS edge_at
    FROM (
        SELECT tot.*,
               width_bucket(ts, CAST(:b_at AS timestamptz[])) AS j,
               coalesce(width_bucket(p_ts, CAST(:b_at AS timestamptz[])), 0) AS p_j,
               CASE WHEN p_v > 0 AND v < p_v THEN
                   CASE WHEN p_v = power(CAST(10 AS float8), ceil(log(p_v)))
                        THEN power(CAST(10 AS float8), ceil(log(p_v))) * 10
                        ELSE power(CAST(10 AS float8), ceil(log(p_v))) END
               END AS modulus
        FROM tot
    ) t
    WHERE t.v < t.p_v OR t.j > t.p_j
),
edge AS (  -- per meter and edge: the bracket's base reading and its share of the pair
    SELECT device_id, site_id, role, edge_at,
           date_part('epoch', ts - p_ts) <= {MAX_TOTALISER_GAP_S} AS paired,
           ts = edge_at AND (y_ts IS NOT NULL
               AND date_part('epoch', y_ts - ts) <= {MAX_TOTALISER_GAP_S}) AS on_edge,
           p_ts, p_v + (v - p_v + off) * date_part('epoch', edge_at - p_ts)
                 / date_part('epoch', ts - p_ts) AS paired_value,
           ts, v
    FROM tot_mark WHERE j > p_j
),
meter_day AS (
    SELECT a.site_id, a.day, m.device_id, m.role, a.t0, a.t1 FROM asked a
    JOIN meter m ON m.site_id = a.site_id WHERE m.role IN ('inlet', 'outlet')
),
bracket AS (  -- (base time, value at the edge without the drops since base) or nothing
    SELECT md.site_id, md.day, md.device_id, md.role,
           CASE WHEN s.paired THEN s.p_ts WHEN s.on_edge THEN s.ts END AS lo_ts,
           CASE WHEN s.paired THEN s.paired_value WHEN s.on_edge THEN s.v END AS lo_v,
           CASE WHEN e.paired THEN e.p_ts END AS hi_ts,
           CASE WHEN e.paired THEN e.paired_value END AS hi_v
    FROM meter_day md
    LEFT JOIN edge s ON s.device_id = md.device_id AND s.edge_at = md.t0
    LEFT JOIN edge e ON e.device_id = md.device_id AND e.edge_at = md.t1
),
drop_off AS (  -- the offsets of the drops between a meter's two brackets
    SELECT b.site_id, b.day, b.device_id, sum(d.off) AS off
    FROM bracket b
    JOIN tot_mark d ON d.device_id = b.device_id AND d.v < d.p_v
     AND d.ts > b.lo_ts AND d.ts <= b.hi_ts
    GROUP BY b.site_id, b.day, b.device_id
),
volume AS (
    SELECT b.site_id, b.day,
           count(*) = count(b.hi_v - b.lo_v) AS whole,
           sum(CASE WHEN b.role = 'outlet' THEN -1 ELSE 1 END
               * (b.hi_v - b.lo_v + coalesce(o.off, 0))) AS m3
    FROM bracket b
    LEFT JOIN drop_off o ON o.site_id = b.site_id AND o.day = b.day AND o.device_id = b.device_id
    GROUP BY b.site_id, b.day
),
fig AS (
    SELECT a.site_id, a.day, a.t0, a.lnc,
           coalesce(c.defined, 0) / CAST(a.slots AS float8) AS coverage,
           CASE WHEN a.night_hi > a.night_lo
                THEN coalesce(c.night_defined, 0) / CAST(a.night_hi - a.night_lo AS float8)
                ELSE 0.0 END AS night_coverage,
           c.mnf, c.mnf_at, c.ndf,
           CASE WHEN v.whole THEN v.m3 ELSE c.net_sum * {SLOT_S / 3600} END AS inlet,
           CASE WHEN v.whole THEN 'totaliser' ELSE 'slots' END AS source,
           coalesce(c.slot_i, '{{}}') AS slot_i, coalesce(c.slot_net, '{{}}') AS slot_net,
           coalesce(c.slot_azp, '{{}}') AS slot_azp, c.net_mean
    FROM asked a
    LEFT JOIN day_fig c ON c.site_id = a.site_id AND c.day = a.day
    LEFT JOIN volume v ON v.site_id = a.site_id AND v.day = a.day
),
day_row AS (
    SELECT f.*, f.night_coverage >= {MIN_NIGHT_COVERAGE} AND f.mnf IS NOT NULL AS valid,
           greatest(0.0, f.mnf - f.lnc) AS net_night
    FROM fig f
)
INSERT INTO dma_days (site_id, day, valid, coverage, night_coverage, night_use_m3h, inlet_m3,
                      inlet_source, mnf_m3h, mnf_at, net_night_flow_m3h, ndf_h, leakage_m3,
                      leakage_pct, computed_at, slot_index, slot_net_m3h, slot_azp_mpa,
                      net_mean_m3h)
SELECT site_id, day, valid, coverage, night_coverage, lnc,
       CASE WHEN valid THEN inlet END,
       CASE WHEN valid THEN source END,
       CASE WHEN valid THEN mnf END,
       CASE WHEN valid THEN mnf_at END,
       CASE WHEN valid THEN net_night END,
       CASE WHEN valid THEN ndf END,
       CASE WHEN valid THEN net_night * ndf END,
       CASE WHEN valid AND inlet > 0 THEN 100 * net_night * ndf / inlet END,
       CAST(:now AS timestamptz), slot_i, slot_net, slot_azp, net_mean
FROM day_row
ON CONFLICT (site_id, day) DO UPDATE SET
    valid = excluded.valid, coverage = excluded.coverage,
    night_coverage = excluded.night_coverage, night_use_m3h = excluded.night_use_m3h,
    inlet_m3 = excluded.inlet_m3, inlet_source = excluded.inlet_source,
    mnf_m3h = excluded.mnf_m3h, mnf_at = excluded.mnf_at,
    net_night_flow_m3h = excluded.net_night_flow_m3h, ndf_h = excluded.ndf_h,
    leakage_m3 = excluded.leakage_m3, leakage_pct = excluded.leakage_pct,
    computed_at = excluded.computed_at, slot_index = excluded.slot_index,
    slot_net_m3h = excluded.slot_net_m3h, slot_azp_mpa = excluded.slot_azp_mpa,
    net_mean_m3h = excluded.net_mean_m3h
"""
STATEMENT = text(_SQL)
# for the statement only: its sorts and hashes in memory (at the default 4 MB the full-size
# call spilled 250 MB to disk, docs/benchmarks.md); hash joins, not merge or nested-loop
# joins: the planner cannot know how many rows the arrays and CTEs hold (it guesses 1 to a
# few hundred for 30,000 days), and picked merges of 2.9M slots through sorts and, with AZP
# meters, a nested loop over the hourly pressures, every MNF day against every hour of the
# call (766,720 rows filtered out for 234 days: quadratic in the days). The per-day and
# per-meter LATERALs stay nested loops, the only plan a lateral has. No JIT: the guessed
# cost of the full-size call passes jit_above_cost and compiling its expressions took 1.6 s
# of 23 (EXPLAIN ANALYZE), for code that runs once. A batch's few days take kilobytes.
PLANNER = {"work_mem": "512MB", "enable_mergejoin": "off", "enable_nestloop": "off", "jit": "off"}
_GET = text(
    "SELECT current_setting(k) FROM unnest(CAST(:k AS text[])) WITH ORDINALITY s(k, n) ORDER BY n"
)
# true: is_local, within this transaction at most
_SET = text(
    "SELECT count(set_config(k, v, true)) "
    "FROM unnest(CAST(:k AS text[]), CAST(:v AS text[])) s(k, v)"
)


def _planned(
    conn: Connection, planner: dict[str, str], statement: Any, params: dict[str, Any]
) -> None:
    """Run `statement` with these planner settings, the connection's own put back after."""
    keys = pg_array(list(planner))
    before = [str(v) for v in conn.execute(_GET, {"k": keys}).scalars()]
    conn.execute(_SET, {"k": keys, "v": pg_array(list(planner.values()))})
    conn.execute(statement, params)
    conn.execute(_SET, {"k": keys, "v": pg_array(before)})


def parameters(
    days: Sequence[AskedDay], meters: Sequence[tuple[str, str, str]], now: datetime
) -> dict[str, Any]:
    """The statement's parameters for these days; `meters` are (device, site, role) of the
    days' sites' active leak meters."""
    # the edges of the asked days: the totaliser's brackets
    bounds = sorted(
        {d.start for d in days} | {d.start + timedelta(seconds=d.slots * SLOT_S) for d in days}
    )
    return {
        "a_site": pg_array([d.site_id for d in days]),
        "a_t0": pg_array([d.start for d in days]),
        "a_slots": pg_array([d.slots for d in days]),
        "a_day": pg_array([d.day.isoformat() for d in days]),
        "a_nlo": pg_array([d.night_lo for d in days]),
        "a_nhi": pg_array([d.night_hi for d in days]),
        "a_lnc": pg_array([float(d.night_use_m3h) for d in days]),
        "a_n1": pg_array([float(d.exponent) for d in days]),
        "m_dev": pg_array([m[0] for m in meters]),
        "m_site": pg_array([m[1] for m in meters]),
        "m_role": pg_array([m[2] for m in meters]),
        "b_at": pg_array(bounds),
        "now": now,
    }


def recompute(
    conn: Connection,
    days: Sequence[AskedDay],
    meters: Sequence[tuple[str, str, str]],
    now: datetime,
) -> None:
    """Compute and store these days' figures and slots (one upsert of their `dma_days`
    rows); `meters` are (device, site, role) of the days' sites' active leak meters."""
    if days:
        _planned(conn, PLANNER, STATEMENT, parameters(days, meters, now))
