"""`python -m bench.hj212client`: one process of simulated HJ 212 data loggers for the hj212
stage, one TCP connection per logger (MN), driven by commands on stdin.

One process cannot hold both ends of thousands of connections, so the stage runs several of
these beside the gateway process. Each connects from its own 127.0.0.x source addresses (the
ephemeral ports of one address pair would run out first). Commands, one per line; each answer
is one line `RESULT <json>` on stdout (logs go to stderr):

    connect              open every logger's connection, sending nothing
    login                one 2011 frame per logger (logs it in), all answered
    open                 connect, then login
    paced RATE SECONDS   send 2011 frames at RATE frames/s (round robin over the loggers),
                         then wait for the outstanding answers; frame -> 9014 latencies
    saturate SECONDS     every logger in a closed loop (send, wait for its 9014, send the
                         next) for SECONDS; frames answered within the window
    close                close every connection
    quit                 exit

Every frame carries 8 dust readings with a DataTime of its own, so each answered frame is 8
new readings in the database (what the stage checks for loss).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ingest.hj212.protocol import Frame, Framer, Packet, encode_frame, parse_segment

TZ = ZoneInfo("Asia/Shanghai")
READINGS_PER_FRAME = 8
CONNECT_CONCURRENCY = 100  # the gateway's listen backlog is asyncio's default, 100
ANSWER_TIMEOUT_S = 60.0


def _items(seq: int) -> str:
    pm10 = 40 + seq % 37
    return (
        f"a34002-Rtd={pm10},a34002-Flag=N;a34004-Rtd={pm10 * 0.6:.1f},a34004-Flag=N;"
        f"a34001-Rtd={pm10 * 1.8:.1f},a34001-Flag=N;LA-Rtd={55 + seq % 11},LA-Flag=N;"
        "a01001-Rtd=21.5,a01001-Flag=N;a01002-Rtd=55.0,a01002-Flag=N;"
        "a01007-Rtd=2.1,a01007-Flag=N;a01008-Rtd=180,a01008-Flag=N"
    )


class Logger:
    def __init__(self, mn: str, password: str, base: datetime) -> None:
        self.mn = mn
        self.password = password
        self.base = base
        self.seq = 0
        self.pending: dict[str, tuple[float, asyncio.Future[float]]] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self, port: int, source: str) -> None:
        reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0)
        )
        self.task = asyncio.create_task(self._read(reader))

    def send(self) -> asyncio.Future[float]:
        """Send the next frame; the future gives the seconds until its 9014."""
        assert self.writer is not None
        self.seq += 1
        qn = str(self.seq)
        at = self.base + timedelta(seconds=self.seq)
        frame = encode_frame(
            f"QN={qn};ST=39;CN=2011;PW={self.password};MN={self.mn};Flag=5;"
            f"CP=&&DataTime={at:%Y%m%d%H%M%S};{_items(self.seq)}&&"
        )
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.pending[qn] = (time.perf_counter(), fut)
        self.writer.write(frame)
        return fut

    async def _read(self, reader: asyncio.StreamReader) -> None:
        framer = Framer()
        try:
            while data := await reader.read(65536):
                now = time.perf_counter()
                for item in framer.feed(data):
                    if not isinstance(item, Frame):
                        continue
                    p = parse_segment(item.segment)
                    if isinstance(p, Packet) and p.cn == "9014" and p.qn in self.pending:
                        sent, fut = self.pending.pop(p.qn)
                        if not fut.done():
                            fut.set_result(now - sent)
        except ConnectionError:
            pass
        for _, fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"{self.mn}: connection closed"))
        self.pending.clear()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


async def _settle(futures: list[asyncio.Future[float]]) -> tuple[list[float], int]:
    """Latencies of the answered futures and how many got no answer in the timeout."""
    if not futures:
        return [], 0
    done, _ = await asyncio.wait(futures, timeout=ANSWER_TIMEOUT_S)
    latencies = [f.result() for f in done if f.exception() is None]
    return latencies, len(futures) - len(latencies)


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        base = datetime.now(TZ).replace(microsecond=0) - timedelta(hours=args.hours_back)
        self.port: int = args.port
        self.sources: list[str] = args.sources.split(",")
        self.loggers = [
            Logger(f"{args.mn_prefix}{i:07d}", args.password, base)
            for i in range(args.first, args.first + args.count)
        ]

    async def connect(self) -> dict[str, Any]:
        """Open every connection, sending nothing yet."""
        started = time.perf_counter()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(i: int, logger: Logger) -> None:
            async with gate:
                await logger.open(self.port, self.sources[i % len(self.sources)])

        await asyncio.gather(*(one(i, lg) for i, lg in enumerate(self.loggers)))
        return {"opened": len(self.loggers), "seconds": time.perf_counter() - started}

    async def login(self) -> dict[str, Any]:
        """One 2011 frame per logger (its first frame logs it in), all answered."""
        started = time.perf_counter()
        latencies, unanswered = await _settle([lg.send() for lg in self.loggers])
        return {
            "answered": len(latencies),
            "unanswered": unanswered,
            "seconds": time.perf_counter() - started,
        }

    async def open(self) -> dict[str, Any]:
        opened = await self.connect()
        logged = await self.login()
        return {
            **logged,
            "opened": opened["opened"],
            "seconds": opened["seconds"] + logged["seconds"],
        }

    async def paced(self, rate: float, seconds: float) -> dict[str, Any]:
        """Open loop: frames at `rate` per second whatever the answers do (a fleet of
        loggers each on its own clock), round robin over the connections, 5 ms ticks."""
        futures: list[asyncio.Future[float]] = []
        started = time.perf_counter()
        sent = 0
        nxt = 0
        lag_max = 0.0
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(rate * elapsed)
            lag_max = max(lag_max, (due - sent) / rate)
            while sent < due:
                futures.append(self.loggers[nxt].send())
                nxt = (nxt + 1) % len(self.loggers)
                sent += 1
            await asyncio.sleep(0.005)
        send_s = time.perf_counter() - started
        latencies, unanswered = await _settle(futures)
        return {
            "sent": sent,
            "answered": len(latencies),
            "unanswered": unanswered,
            "send_seconds": send_s,
            "schedule_lag_max_s": lag_max,
            "latencies_s": latencies,
        }

    async def saturate(self, seconds: float) -> dict[str, Any]:
        """Closed loop: each logger sends its next frame when the last one is answered."""
        deadline = time.perf_counter() + seconds
        in_window = 0
        late: list[asyncio.Future[float]] = []
        failed = 0
        latencies: list[float] = []

        async def loop(logger: Logger) -> None:
            nonlocal in_window, failed
            while time.perf_counter() < deadline:
                fut = logger.send()
                try:
                    latency = await asyncio.wait_for(asyncio.shield(fut), ANSWER_TIMEOUT_S)
                except (TimeoutError, ConnectionError):
                    failed += 1
                    late.append(fut)
                    return
                if time.perf_counter() <= deadline:
                    in_window += 1
                    latencies.append(latency)
                else:
                    late.append(fut)  # answered after the window: counted, not timed

        started = time.perf_counter()
        await asyncio.gather(*(loop(lg) for lg in self.loggers))
        await _settle([f for f in late if not f.done()])
        answered_late = sum(1 for f in late if f.done() and f.exception() is None)
        return {
            "answered_in_window": in_window,
            "answered_after_window": answered_late,
            "unanswered": len(late) - answered_late,
            "failed_loops": failed,
            "seconds": seconds,
            "elapsed_s": time.perf_counter() - started,
            "latencies_s": latencies,
        }

    async def close(self) -> dict[str, Any]:
        await asyncio.gather(*(lg.close() for lg in self.loggers))
        return {"closed": len(self.loggers)}


async def main(args: argparse.Namespace) -> None:
    fleet = Fleet(args)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not words or words[0] == "quit":
            await fleet.close()
            return
        command = words[0]
        if command == "open":
            result = await fleet.open()
        elif command == "connect":
            result = await fleet.connect()
        elif command == "login":
            result = await fleet.login()
        elif command == "paced":
            result = await fleet.paced(float(words[1]), float(words[2]))
        elif command == "saturate":
            result = await fleet.saturate(float(words[1]))
        elif command == "close":
            result = await fleet.close()
        else:
            result = {"error": f"unknown command {command!r}"}
        print("RESULT " + json.dumps(result), flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.hj212client")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sources", required=True, help="comma-separated 127.0.0.x addresses")
    p.add_argument("--mn-prefix", default="BENCHMN")
    p.add_argument("--first", type=int, required=True, help="number of the first logger")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--hours-back", type=int, default=6, help="DataTime of the first frames")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
