"""A simulated HJ 212 data logger: a simulated sensor's samples sent as 2011 frames over TCP.

It behaves as field loggers do (standards.md §1.7, §1.11): each frame asks for an answer
(Flag=5); without a 9014 for its QN within the timeout it resends, up to `retries` times, each
time with a new QN; what is still unanswered stays in a backlog that is uploaded again, oldest
first, once the platform answers (the history upload after an outage).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from datetime import UTC, datetime

from devices.simulators import LOCAL_TZ, SimulatedDevice
from ingest.hj212.protocol import Frame, Framer, Packet, encode_frame, parse_segment
from monitor.core.catalogue import METRICS

log = logging.getLogger(__name__)

ST_BY_KIND = {"dust_monitor": "39", "water_quality": "21"}  # §1.6: 39 dust, 21 surface water


class HJ212Logger:
    def __init__(
        self,
        device: SimulatedDevice,
        *,
        mn: str,
        password: str,
        host: str,
        port: int,
        timeout_s: float = 5.0,
        retries: int = 3,
        backlog: int = 10_000,
    ) -> None:
        self.device = device
        self.mn = mn
        self.password = password
        self.address = (host, port)
        self.timeout_s = timeout_s
        self.retries = retries
        self.pending: deque[datetime] = deque(maxlen=backlog)
        self._sock: socket.socket | None = None
        self._framer = Framer()
        self._qn = 0

    def _next_qn(self) -> str:
        # QN is a timestamp to the ms (§1.3); a counter in the ms digits keeps it unique
        self._qn = (self._qn + 1) % 1000
        return f"{datetime.now(LOCAL_TZ):%Y%m%d%H%M%S}{self._qn:03d}"

    def frame(self, ts: datetime, qn: str) -> bytes:
        """The 2011 real-time frame of the device's sample at `ts`."""
        sample = self.device.sample(ts)
        items = [
            f"{METRICS[m].hj212}-Rtd={v:g},{METRICS[m].hj212}-Flag=N"
            for m, v in sample.values.items()
            if METRICS[m].hj212
        ]
        st = ST_BY_KIND.get(str(self.device.kind), "39")
        return encode_frame(
            f"QN={qn};ST={st};CN=2011;PW={self.password};MN={self.mn};Flag=5;"
            f"CP=&&DataTime={ts.astimezone(LOCAL_TZ):%Y%m%d%H%M%S};{';'.join(items)}&&"
        )

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection(self.address, timeout=self.timeout_s)
            self._framer = Framer()
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _answered(self, sock: socket.socket, qn: str) -> bool:
        sock.settimeout(self.timeout_s)
        while True:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                return False
            if not data:
                raise ConnectionError("the platform closed the connection")
            for item in self._framer.feed(data):
                if isinstance(item, Frame):
                    p = parse_segment(item.segment)
                    if isinstance(p, Packet) and p.cn == "9014" and p.qn == qn:
                        return True

    def upload(self, ts: datetime) -> bool:
        """Send the sample at `ts` (after any backlog); False if it is left in the backlog."""
        self.pending.append(ts)
        while self.pending:
            if not self._send_one(self.pending[0]):
                return False
            self.pending.popleft()
        return True

    def _send_one(self, ts: datetime) -> bool:
        for _ in range(1 + self.retries):
            qn = self._next_qn()
            try:
                sock = self._connect()
                sock.sendall(self.frame(ts, qn))
                if self._answered(sock, qn):
                    return True
            except OSError as exc:
                log.info("HJ 212 logger %s: %s; retrying", self.mn, exc)
                self.close()
        return False

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Upload a real-time frame every `interval_s` until `stop` is set."""
        while not stop.is_set():
            self.upload(datetime.now(UTC).replace(microsecond=0))
            stop.wait(interval_s)
        self.close()
