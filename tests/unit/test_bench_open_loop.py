"""The API's open loop measures from the scheduled send time: a server stall shows in the
latency of every request due during it, also of those that could not be sent (coordinated
omission would leave that wait out), and no arrival is dropped."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import apiload

STALL_AT_S, STALL_S = 1.5, 0.4  # into the run: after the 1 s warm-up


@given(rate=st.floats(5, 500), seconds=st.floats(0.5, 5), seed=st.integers(0, 2**32))
@settings(max_examples=50, deadline=None)
def test_arrivals_are_ordered_inside_the_span_at_about_the_rate(
    rate: float, seconds: float, seed: int
) -> None:
    at = apiload.arrivals(rate, seconds, seed)
    assert at == sorted(at) and all(0 <= t < seconds for t in at)
    assert at == apiload.arrivals(rate, seconds, seed)  # seeded: the same schedule again
    n, expected = len(at), rate * seconds
    assert abs(n - expected) < 6 * expected**0.5 + 3  # Poisson: sd = sqrt(mean)


class _Stalling(ThreadingHTTPServer):
    """Answers at once, one request at a time, except that the first request after
    STALL_AT_S holds the server for STALL_S."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.started = time.perf_counter()
        self.lock = threading.Lock()
        self.stalled = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the bench's connections are
    disable_nagle_algorithm = True  # headers and body as two writes: no delayed-ACK wait
    server: _Stalling

    def do_GET(self) -> None:
        with self.server.lock:
            since = time.perf_counter() - self.server.started
            if since >= STALL_AT_S and not self.server.stalled:
                self.server.stalled = True
                time.sleep(STALL_S)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


class _Api:
    def __init__(self, port: int) -> None:
        self.port = port

    def pids(self) -> list[int]:
        return [os.getpid()]


class _Db:
    def backend_pids(self) -> list[int]:
        return []


@pytest.fixture
def stalling() -> Iterator[_Stalling]:
    server = _Stalling()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_stall_is_in_the_latency_of_requests_that_could_not_be_sent(
    stalling: _Stalling,
) -> None:
    rate, seconds = 100.0, 2.0
    stalling.started = time.perf_counter()
    out = apiload.measure_open(
        _Db(),  # type: ignore[arg-type]
        _Api(stalling.server_address[1]),  # type: ignore[arg-type]
        {"x": lambda _: "/"},
        {},
        rate=rate,
        seconds=seconds,
        what="test",
        connections=2,  # both are held by the stall: the next arrivals wait to be sent
    )["x"]
    measured = [t for t in apiload.arrivals(rate, 1.0 + seconds, 1000) if t >= 1.0]
    assert out["n"] == len(measured)  # every arrival answered and counted, none omitted
    # the stalled request and those due just after it waited most of the stall
    assert out["max_ms"] >= 0.8 * STALL_S * 1000
    # the ~40 requests due during the stall could not be sent: their wait is in the figures
    assert out["send_lag_max_ms"] >= 0.5 * STALL_S * 1000
    # about 40 of the 200 measured were due during the stall, most of them over 100 ms late:
    # measured from their actual send they would look fast, and the p90 with them
    assert out["p90_ms"] >= 50
    assert out["p50_ms"] < 50  # the rest was fast: one stall, not a slow server
