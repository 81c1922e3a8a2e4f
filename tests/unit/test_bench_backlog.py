"""The scaling stage's backlog: each round shuffled, as a live fleet's arrivals interleave.
Each device's own messages keep their order, nothing is lost or added, and a round-robin
split over two ingestors (what Mosquitto's $share does) no longer keeps every device on one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.fleet import Backlog


def _backlog(devices: int, rounds: int) -> Backlog:
    return Backlog(
        [
            (f"envmon/d{d}/telemetry", f"{r}".encode())
            for r in range(rounds)
            for d in range(devices)
        ],
        readings=devices * rounds,
        reading_sets=devices * rounds,
    )


@given(st.integers(1, 40), st.integers(1, 6), st.integers(0, 1000))
def test_each_device_keeps_its_order_and_nothing_is_lost(
    devices: int, rounds: int, seed: int
) -> None:
    before = _backlog(devices, rounds)
    after = before.each_round_shuffled(devices, seed=seed)
    assert sorted(after.messages) == sorted(before.messages)
    for d in range(devices):
        mine = [p for t, p in after.messages if t == f"envmon/d{d}/telemetry"]
        assert mine == [f"{r}".encode() for r in range(rounds)]
    assert (after.readings, after.reading_sets) == (before.readings, before.reading_sets)


def test_a_round_robin_split_scatters_devices_once_shuffled() -> None:
    devices, rounds = 100, 4

    def ingestors_of_each_device(b: Backlog) -> list[int]:
        seen: dict[str, set[int]] = {}
        for i, (topic, _) in enumerate(b.messages):
            seen.setdefault(topic, set()).add(i % 2)
        return [len(v) for v in seen.values()]

    plain = _backlog(devices, rounds)
    assert max(ingestors_of_each_device(plain)) == 1  # the accident the shuffle undoes
    assert sum(n == 2 for n in ingestors_of_each_device(plain.each_round_shuffled(devices))) > 50
