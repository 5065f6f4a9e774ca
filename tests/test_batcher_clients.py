"""The batch window learns which clients to wait for: a closed client stops holding it open.

Real Redis, a real ``PolicyWorker`` in a thread, real ``PolicyClient``s. The
window is set far longer than the clients' timeout, so a batch that waited
for a client that is gone fails the test (``PolicyTimeout``); what is
asserted is which requests shared a batch, never how long anything took.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.policy import Batch
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.client import PolicyClient, RemotePolicyError
from tests.policies_for_tests import DIM, FAIL_MARKER, EchoPolicy, expected_actions

POOL = "echo"


def _rows(value: float) -> np.ndarray:
    return np.full((2, DIM), value, np.float32)


def test_a_closed_client_does_not_hold_the_next_batches_open(settings: RedisSettings) -> None:
    # 60 s window, clients remembered for 120 s: before, every batch after B closed
    # waited the whole window for B, and A's requests timed out.
    worker = PolicyWorker(
        POOL, EchoPolicy(stall_s=0), settings, max_wait_ms=60_000.0, active_client_s=120.0
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with PolicyClient(POOL, settings, timeout_s=15) as b:
            for i in range(4):  # B alone: its period is learned
                np.testing.assert_array_equal(
                    b.infer({"x": _rows(i)}, [0, 1]), expected_actions(_rows(i))
                )
        batched_with = []
        with PolicyClient(POOL, settings, timeout_s=15) as a:
            for i in range(3):
                x = _rows(100 + i)
                np.testing.assert_array_equal(a.infer({"x": x}, [0, 1]), expected_actions(x))
                batched_with.append(a.last_timing["batch_requests"])
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert batched_with == [1.0, 1.0, 1.0]
    assert worker.stats.requests == 7 and worker.stats.batches == 7


class SlowEcho(EchoPolicy):
    """EchoPolicy whose forward pass takes 50 ms: a period of its clients is mostly model time."""

    def infer(self, batch: Batch) -> np.ndarray:
        time.sleep(0.05)
        return super().infer(batch)


def test_clients_in_lockstep_share_every_batch(settings: RedisSettings) -> None:
    # Learning periods must not split clients that are all active: each round, the
    # window waits for both (the 60 s window is never reached).
    worker = PolicyWorker(POOL, SlowEcho(stall_s=0), settings, max_wait_ms=60_000.0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    rounds, sizes, errors = 8, [[], []], []
    barrier = threading.Barrier(2)

    def run(index: int) -> None:
        try:
            with PolicyClient(POOL, settings, timeout_s=15) as client:
                barrier.wait()
                for i in range(rounds):
                    x = _rows(index * 1000 + i)
                    np.testing.assert_array_equal(
                        client.infer({"x": x}, [0, 1]), expected_actions(x)
                    )
                    sizes[index].append(client.last_timing["batch_requests"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        worker.stop()
        thread.join(10)
    assert not errors, errors
    # The first requests may be served apart (neither client is known yet), and the
    # pairing may then be one round apart, leaving one client's last request alone;
    # every round in between shares its batch.
    assert sizes[0][2:-1] == [2.0] * (rounds - 3) and sizes[1][2:-1] == [2.0] * (rounds - 3)
    assert worker.stats.requests == 2 * rounds and worker.stats.batches <= rounds + 3


def _arrivals(batcher: object, schedule: dict[str, list[float]]) -> None:
    """Feed the batcher's client bookkeeping requests at the given (synthetic) times."""
    from types import SimpleNamespace

    events = sorted((t, c) for c, times in schedule.items() for t in times)
    for t, client in events:
        item = SimpleNamespace(request=SimpleNamespace(client=client, think_ms=-1.0))
        batcher._note_clients([item], t)  # type: ignore[attr-defined]


def test_the_other_lane_of_an_overlap_sim_is_not_waited_for() -> None:
    """Lanes A and B alternate half a period apart: when A's request arrives, B's next one
    is not due within the window, so the batch does not wait for it (it used to wait the
    whole window for B, undoing the overlap); clients in lockstep are still waited for."""
    from arena_eval.policy_worker.batcher import WindowBatcher
    from arena_eval.policy_worker.config import PolicyWorkerConfig

    config = PolicyWorkerConfig(pool="p", policy="zero", max_wait_ms=20.0)
    lanes = WindowBatcher(config)
    _arrivals(lanes, {"A": [0.0, 0.1, 0.2, 0.3], "B": [0.05, 0.15, 0.25]})
    assert lanes._awaited_until({"A"}, 0.3) is None

    lockstep = WindowBatcher(config)
    _arrivals(lockstep, {"A": [0.0, 0.1, 0.2, 0.3], "B": [0.0, 0.1, 0.2]})
    due = lockstep._awaited_until({"A"}, 0.3)
    assert due is not None and due > 0.3


def _reads(batcher: object, events: list[tuple[float, str, float]]) -> None:
    """Requests read at (synthetic) times, each with the think time its client reported."""
    from types import SimpleNamespace

    for t, client, think_ms in events:
        item = SimpleNamespace(request=SimpleNamespace(client=client, think_ms=think_ms))
        batcher._note_clients([item], t)  # type: ignore[attr-defined]


def _answers(batcher: object, t: float, clients: str) -> None:
    from types import SimpleNamespace

    batch = [SimpleNamespace(request=SimpleNamespace(client=c)) for c in clients]
    batcher.replied(batch, now=t)  # type: ignore[attr-defined]


def test_a_group_answered_a_moment_ago_is_waited_for() -> None:
    """Four sims on a 22 ms model, split into two groups (A, B, C and D) by one sim that fell
    a pass behind: each group's requests wait in the stream during the other's pass, so
    they are read a whole pass late and their period says "44 ms away". D's batch opens just
    as A, B and C get their answers; they say they ask again 3 ms after an answer, so the
    batch waits for them and the groups merge (before, D ran alone, every step, for good)."""
    from arena_eval.policy_worker.batcher import WindowBatcher
    from arena_eval.policy_worker.config import PolicyWorkerConfig

    config = PolicyWorkerConfig(pool="p", policy="zero", max_wait_ms=5.0)

    def split(think_ms: float) -> WindowBatcher:
        batcher = WindowBatcher(config)
        for k in range(3):  # one cycle = two passes of 22 ms
            base = 0.044 * k
            _reads(batcher, [(base, c, think_ms) for c in "ABC"])
            _answers(batcher, base + 0.022, "ABC")
            _reads(batcher, [(base + 0.022, "D", think_ms)])
            _answers(batcher, base + 0.044, "D")
        _reads(batcher, [(0.132, c, think_ms) for c in "ABC"])
        _answers(batcher, 0.154, "ABC")
        _reads(batcher, [(0.154, "D", think_ms)])
        return batcher

    due = split(3.0)._awaited_until({"D"}, 0.154)
    assert due is not None and due > 0.157  # waits past their expected 3 ms
    # without the clients' think times the period rules, and the groups stay apart
    assert split(-1.0)._awaited_until({"D"}, 0.154) is None
    # a client that thinks longer than the window (the other lane of an overlap sim)
    assert split(30.0)._awaited_until({"D"}, 0.154) is None


def test_requests_carry_the_clients_think_time_and_the_worker_notes_its_answers(
    settings: RedisSettings,
) -> None:
    """The think time travels with each request (none on the first), and the serve loop
    tells the batcher when it answers: the two facts the wait-for-a-group rule needs."""
    from arena_eval.policy_worker.batcher import WindowBatcher
    from arena_eval.policy_worker.entries import Pending

    seen: list[float] = []

    class Recording(WindowBatcher):
        def _note_clients(self, items: list[Pending], now: float) -> set[str]:
            seen.extend(p.request.think_ms for p in items if p.request is not None)
            return super()._note_clients(items, now)

    worker = PolicyWorker(POOL, EchoPolicy(stall_s=0), settings, batcher=Recording)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with PolicyClient(POOL, settings, timeout_s=15) as client:
            for i in range(3):
                client.infer({"x": _rows(i)}, [0, 1])
                time.sleep(0.05)  # the "env step" between an answer and the next request
            with pytest.raises(RemotePolicyError):
                client.infer({"x": _rows(FAIL_MARKER)}, [0, 1])
            client.infer({"x": _rows(9)}, [0, 1])  # after a failure: no think time
            replied = dict(worker.batcher._replied)  # type: ignore[attr-defined]
            client_id = client.client_id
    finally:
        worker.stop()
        thread.join(10)
    assert seen[0] == -1.0 and len(seen) == 5
    assert all(t >= 50.0 for t in seen[1:4]), seen
    assert seen[4] == -1.0, seen
    assert client_id in replied
