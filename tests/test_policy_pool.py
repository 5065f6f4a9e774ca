"""The model pool end to end: PolicyClient <-> Redis <-> PolicyWorker(s).

Every test talks to a real Redis server and runs real workers, in threads for
speed where the point is the protocol, and in processes where the point is
process death (kill -9) or several independent clients.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from arena_eval.broker import codec, streams
from arena_eval.broker.constants import POLICY_GROUP
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import PoolNotFound, live_workers
from arena_eval.broker.protocol import F_DATA, F_REPLY, F_RID, decode_reply
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import PolicySpec, SpecMismatch
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.client import PolicyClient, RemotePolicyError
from tests.policies_for_tests import DIM, FAIL_MARKER, STALL_MARKER, EchoPolicy, expected_actions
from tests.worker_procs import procs, wait_until

POOL = "echo"
ECHO = "tests.policies_for_tests:EchoPolicy"


class ThreadWorker:
    def __init__(self, settings: RedisSettings, **kwargs: object) -> None:
        self.policy = EchoPolicy(stall_s=kwargs.pop("stall_s", 0))  # type: ignore[arg-type]
        self.worker = PolicyWorker(POOL, self.policy, settings, **kwargs)  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> PolicyWorker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "worker did not stop"


def rows_x(n: int, base: float = 0.0) -> np.ndarray:
    return (base + np.arange(n * DIM, dtype=np.float32)).reshape(n, DIM)


@pytest.fixture
def worker(settings: RedisSettings) -> Iterator[PolicyWorker]:
    with ThreadWorker(settings, max_wait_ms=1.0) as w:
        yield w


def test_round_trip_and_timings(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    with PolicyClient(POOL, settings, timeout_s=10) as client:
        assert client.spec is not None and client.spec.action_shape == (2, DIM)
        x = rows_x(5)
        actions = client.infer({"x": x}, list(range(5)))
        np.testing.assert_array_equal(actions, expected_actions(x))
        for key in ("queue_ms", "decode_ms", "infer_ms", "encode_ms", "batch_rows"):
            assert key in client.last_timing
        assert client.last_timing["batch_rows"] == 5
    # answered requests leave no entry and no pending id behind
    keys = Keys(settings.prefix)
    assert r.xlen(keys.pool_requests(POOL)) == 0
    assert r.xpending(keys.pool_requests(POOL), POLICY_GROUP)["pending"] == 0


def test_large_payload_shared_memory_and_redis_paths(
    settings: RedisSettings, worker: PolicyWorker
) -> None:
    # 70k rows x 4 float32 = 1.1 MB: above the shared-memory threshold
    x = rows_x(70_000)
    for transport in ("auto", "redis"):
        with PolicyClient(POOL, settings, timeout_s=10, transport=transport) as client:
            np.testing.assert_array_equal(client.infer({"x": x}, [0] * len(x)), expected_actions(x))
    assert worker.stats.requests == 2


def test_worker_survives_its_streams_being_deleted(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    with PolicyClient(POOL, settings, timeout_s=10) as client:
        x = rows_x(2)
        np.testing.assert_array_equal(client.infer({"x": x}, [0, 1]), expected_actions(x))
        time.sleep(0.3)  # the worker is now blocked in XREADGROUP
        r.delete(keys.pool_requests(POOL), keys.pool_host_requests(POOL, worker.host_id))
        wait_until(lambda: r.exists(keys.pool_requests(POOL)), 10, "the group to be recreated")
        np.testing.assert_array_equal(client.infer({"x": x}, [0, 1]), expected_actions(x))
    assert not worker.stopping


def test_pool_not_found_has_hint(settings: RedisSettings) -> None:
    with pytest.raises(PoolNotFound, match="arena-eval policy serve --pool nobody"):
        PolicyClient("nobody", settings, timeout_s=0.3)


def test_spec_mismatch_raised_before_sending(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    with PolicyClient(POOL, settings, timeout_s=5) as client:
        bad_inputs = [
            ({"x": rows_x(2).astype(np.float64)}, "expected float32\\[4\\] per row, got float64"),
            ({"x": np.zeros((2, 5), np.float32)}, "got float32\\[5\\]"),
            ({"y": rows_x(2)}, "missing \\['x'\\], unexpected \\['y'\\]"),
            ({"x": rows_x(2), "extra": rows_x(2)}, "unexpected \\['extra'\\]"),
        ]
        for obs, message in bad_inputs:
            with pytest.raises(SpecMismatch, match=message):
                client.infer(obs, [0, 1])
        assert client.requests_sent == 0
    assert worker.stats.requests == 0
    assert r.xinfo_stream(keys.pool_requests(POOL))["last-generated-id"] in (b"0-0", "0-0")


def test_registering_prunes_ids_of_workers_that_died(
    settings: RedisSettings, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    r.sadd(keys.pool_workers(POOL), "ghost-killed-9")  # joined once, no heartbeat any more
    with ThreadWorker(settings) as w:
        wait_until(lambda: live_workers(r, keys, POOL), 10, "the worker")
        members = {m.decode() for m in r.smembers(keys.pool_workers(POOL))}
    assert members == {w.worker_id}


def test_incompatible_worker_is_refused(
    settings: RedisSettings, r: redis.Redis, worker: PolicyWorker
) -> None:
    from arena_eval.policy_worker.registry import load_policy

    # the fixture's worker registers in its thread: under load, it may not have yet
    wait_until(lambda: live_workers(r, Keys(settings.prefix), POOL), 10, "the first worker")
    other = PolicyWorker(POOL, load_policy("zero", {"action_shape": "16x36"}), settings)
    with pytest.raises(SpecMismatch, match=r"cannot join pool 'echo'.*action_shape"):
        other.register()


def test_cross_client_batching(settings: RedisSettings) -> None:
    clients, per_client = 4, 15
    with ThreadWorker(settings, max_wait_ms=50.0, max_batch=64) as w:
        errors: list[BaseException] = []
        barrier = threading.Barrier(clients)

        def run(index: int) -> None:
            try:
                with PolicyClient(POOL, settings, timeout_s=20) as client:
                    barrier.wait()
                    for i in range(per_client):
                        x = rows_x(3, base=index * 1000 + i * 10)
                        got = client.infer({"x": x}, [index] * 3)
                        np.testing.assert_array_equal(got, expected_actions(x))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        stats = w.stats
    total = clients * per_client
    assert stats.requests == total
    assert stats.rows / stats.batches > 3  # mean batch above one request's 3 rows
    assert stats.infer_calls < total


def test_bad_input_dead_letters_and_worker_keeps_serving(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    dead = keys.pool_dead(POOL)
    stream = keys.pool_requests(POOL)
    with PolicyClient(POOL, settings, timeout_s=10) as client:
        # 1. garbage written with redis-cli: no requester, one dead letter
        from typer.testing import CliRunner

        from arena_eval.cli.app import app

        result = CliRunner().invoke(
            app,
            ["redis", "cli", "--redis-url", settings.url or "", "XADD", stream, "*", "foo", "bar"],
        )
        assert result.exit_code == 0, result.output
        wait_until(lambda: r.xlen(dead) >= 1, what="dead letter for garbage")

        # 2. a corrupt payload with a requester: an error reply with the reason
        r.xadd(stream, {F_RID: "rid-corrupt", F_REPLY: client.reply_key, F_DATA: b"AEv\x01junk"})
        wait_until(lambda: r.xlen(dead) >= 2, what="dead letter for corrupt payload")
        replies = r.xrange(client.reply_key)
        errors = [
            decode_reply(f[F_DATA.decode()] if F_DATA.decode() in f else f[F_DATA])
            for _, f in replies
        ]
        assert errors[-1]["kind"] == "error" and errors[-1]["rid"] == "rid-corrupt"
        assert "CodecError" in errors[-1]["error"]

        # 3. a wrong dtype that slipped past a client without the spec check
        client.spec = PolicySpec(name="any", action_shape=(2, DIM))
        with pytest.raises(RemotePolicyError, match="expected float32\\[4\\] per row, got int64"):
            client.infer({"x": np.zeros((2, DIM), np.int64)}, [0, 1])

        # 4. an infer that raises
        x = rows_x(2)
        x[0, 0] = FAIL_MARKER
        with pytest.raises(RemotePolicyError, match="ValueError: echo policy refuses"):
            client.infer({"x": x}, [0, 1])

        # the worker keeps serving good requests
        good = rows_x(3, base=7)
        np.testing.assert_array_equal(client.infer({"x": good}, [0, 1, 2]), expected_actions(good))
    entries = r.xrange(dead)
    assert len(entries) == 4
    reasons = [f[b"reason"].decode() for _, f in entries]
    assert "no payload field" in reasons[0]
    assert "CodecError" in reasons[1]
    assert "SpecMismatch" in reasons[2]
    assert "policy.infer raised ValueError" in reasons[3]
    assert entries[0][1][b"orig:foo"] == b"bar"  # nothing is lost: the original fields are kept
    wait_until(lambda: r.xpending(stream, POLICY_GROUP)["pending"] == 0, 5, "all acked")


def test_late_reply_to_a_closed_client_expires(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    with PolicyClient(POOL, settings, timeout_s=10) as client:
        client.infer({"x": rows_x(1)}, [0])  # the worker has now replied to this client once
        reply_key = client.reply_key
    assert not r.exists(reply_key)  # close() deleted it
    payload = codec.dumps({"kind": "infer", "rid": "late", "obs": {"x": rows_x(1)}})
    r.xadd(keys.pool_requests(POOL), {F_RID: "late", F_REPLY: reply_key, F_DATA: payload})
    wait_until(lambda: r.exists(reply_key), 10, "the late reply")
    assert 0 < r.ttl(reply_key) <= 600


def test_reply_key_must_be_a_client_reply_stream(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    victim = keys.job_results("j1")
    r.hset(victim, "0", "{}")
    payload = codec.dumps({"kind": "infer", "rid": "r1", "obs": {"x": rows_x(1)}})
    for fields in (
        {F_RID: "r1", F_REPLY: victim, F_DATA: payload},  # a valid request aimed at a job key
        {F_RID: "r2", F_REPLY: victim, F_DATA: b"garbage"},
    ):
        r.xadd(keys.pool_requests(POOL), fields)
    wait_until(lambda: r.xlen(keys.pool_dead(POOL)) == 2, 10, "two dead letters")
    assert r.ttl(victim) == -1 and r.type(victim) == b"hash"  # untouched: no EXPIRE, no XADD
    reasons = [f[b"reason"].decode() for _, f in r.xrange(keys.pool_dead(POOL))]
    assert all("is not a client reply stream" in reason for reason in reasons)


def test_dead_letters_keep_large_payloads_bounded(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    big = b"\x00" * (3 << 20)  # 3 MiB of garbage
    r.xadd(keys.pool_requests(POOL), {F_RID: "big", F_DATA: big})
    wait_until(lambda: r.xlen(keys.pool_dead(POOL)) == 1, 10, "the dead letter")
    fields = r.xrange(keys.pool_dead(POOL))[0][1]
    assert int(fields[b"orig:d:bytes"]) == len(big)
    assert fields[b"orig:d"] == big[: 4 << 10]  # DEAD_PAYLOAD_KEEP_BYTES


def test_one_bad_request_does_not_fail_its_batch(settings: RedisSettings) -> None:
    with ThreadWorker(settings, max_wait_ms=200.0) as w:
        results: dict[str, object] = {}

        def run(name: str, x: np.ndarray) -> None:
            with PolicyClient(POOL, settings, timeout_s=10) as client:
                try:
                    results[name] = client.infer({"x": x}, [0] * len(x))
                except RemotePolicyError as exc:
                    results[name] = exc

        bad = rows_x(1)
        bad[0, 0] = FAIL_MARKER
        good = rows_x(2, base=3)
        threads = [
            threading.Thread(target=run, args=("bad", bad)),
            threading.Thread(target=run, args=("good", good)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert isinstance(results["bad"], RemotePolicyError)
    np.testing.assert_array_equal(results["good"], expected_actions(good))  # type: ignore[arg-type]
    assert w.stats.dead_letters == 1


def test_slow_infer_is_not_reclaimed_or_dead_lettered(settings: RedisSettings) -> None:
    # Two workers; whichever takes the request stalls 2.5 s in infer. Without lease
    # renewal the idle one would reclaim it after 0.6 s, count a 2nd delivery (> max 1)
    # and dead-letter it while the first is still computing.
    opts = {"claim_idle_ms": 600, "max_deliveries": 1, "stall_s": 2.5}
    with ThreadWorker(settings, **opts) as a, ThreadWorker(settings, **opts) as b:
        x = rows_x(2)
        x[0, 0] = STALL_MARKER
        with PolicyClient(POOL, settings, timeout_s=20) as client:
            np.testing.assert_array_equal(client.infer({"x": x}, [0, 1]), expected_actions(x))
    assert a.stats.dead_letters == b.stats.dead_letters == 0
    assert a.stats.requests + b.stats.requests == 1


def test_redelivered_too_often_goes_to_dead_letters(
    settings: RedisSettings, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    stream = keys.pool_requests(POOL)
    streams.ensure_group(r, stream, POLICY_GROUP)
    payload = codec.dumps({"kind": "infer", "rid": "r1", "obs": {"x": rows_x(1)}})
    reply_key = keys.reply_stream("victim")
    entry_id = r.xadd(stream, {F_RID: "r1", F_REPLY: reply_key, F_DATA: payload})
    # a consumer that crashes every time it takes the request: 3 deliveries
    r.xreadgroup(POLICY_GROUP, "ghost", {stream: ">"}, count=10)
    r.xclaim(stream, POLICY_GROUP, "ghost", 0, [entry_id])
    r.xclaim(stream, POLICY_GROUP, "ghost", 0, [entry_id])
    with ThreadWorker(settings, claim_idle_ms=100, max_deliveries=3) as w:
        wait_until(lambda: r.xlen(keys.pool_dead(POOL)) == 1, what="dead letter")
        wait_until(lambda: r.xlen(reply_key) == 1, what="error reply")
    reason = r.xrange(keys.pool_dead(POOL))[0][1][b"reason"].decode()
    assert "delivered 4 times without an answer" in reason
    assert decode_reply(r.xrange(reply_key)[0][1][F_DATA])["kind"] == "error"
    assert w.stats.dead_letters == 1 and w.stats.requests == 0
    assert r.xpending(stream, POLICY_GROUP)["pending"] == 0


def test_reclaimed_request_is_served(settings: RedisSettings, r: redis.Redis) -> None:
    keys = Keys(settings.prefix)
    stream = keys.pool_requests(POOL)
    streams.ensure_group(r, stream, POLICY_GROUP)
    with ThreadWorker(settings, claim_idle_ms=200) as w, PolicyClient(POOL, settings) as client:
        w.stop()  # no live reader for a moment
        time.sleep(0.5)
    x = rows_x(2)
    payload = codec.dumps(
        {"kind": "infer", "rid": "r2", "client": "c", "obs": {"x": x}, "episode_ids": ["a", "b"]}
    )
    reply_key = client.reply_key
    r.xadd(stream, {F_RID: "r2", F_REPLY: reply_key, F_DATA: payload})
    r.xreadgroup(POLICY_GROUP, "crashed", {stream: ">"}, count=10)  # taken, never answered
    with ThreadWorker(settings, claim_idle_ms=200) as w2:
        wait_until(lambda: r.xlen(reply_key) >= 1, what="reply after reclaim")
    msg = decode_reply(r.xrange(reply_key)[-1][1][F_DATA])
    np.testing.assert_array_equal(msg["actions"], expected_actions(x))
    assert w2.stats.reclaimed == 1


def test_chunked_policy_asks_only_for_empty_rows(
    settings: RedisSettings, worker: PolicyWorker
) -> None:
    with PolicyClient(POOL, settings, timeout_s=10) as client:
        chunked = ChunkedPolicy(client, num_envs=3)
        x = rows_x(3)
        a0 = chunked.act({"x": x}, ["a", "b", "c"])
        np.testing.assert_array_equal(a0, expected_actions(x)[:, 0])
        assert (chunked.requests, chunked.rows_requested) == (1, 3)
        # env 1 starts a new episode: only its row is requested; 0 and 2 use their buffers
        y = x + 100
        a1 = chunked.act({"x": y}, ["a", "b2", "c"])
        assert (chunked.requests, chunked.rows_requested) == (2, 4)
        np.testing.assert_array_equal(a1[[0, 2]], expected_actions(x)[[0, 2], 1])
        np.testing.assert_array_equal(a1[1], expected_actions(y)[1, 0])
        # envs 0 and 2 ran out of their 2-step chunks; env 1 has one action left
        chunked.act({"x": y}, ["a", "b2", "c"])
        assert (chunked.requests, chunked.rows_requested) == (3, 6)
        chunked.reset([1])
        chunked.act({"x": y}, ["a", "b2", "c"])
        assert (chunked.requests, chunked.rows_requested) == (4, 7)
        assert worker.stats.rows == 7
        # inactive envs get no request and a zero action
        chunked.reset()
        out = chunked.act({"x": y}, ["a", "b2", "c"], active=np.array([True, False, True]))
        assert chunked.rows_requested == 9 and not out[1].any()


@pytest.mark.slow
def test_three_client_processes_two_workers_exactly_once(
    settings: RedisSettings, tmp_path: Path, r: redis.Redis
) -> None:
    requests, rows = 40, 3
    with procs(settings, tmp_path) as p:
        workers = [
            p.cli("policy", "serve", "--pool", POOL, "--policy", ECHO,
                  "--max-wait-ms", "5", name=f"worker{i}")
            for i in range(2)
        ]  # fmt: skip
        keys = Keys(settings.prefix)
        wait_until(lambda: len(live_workers(r, keys, POOL)) == 2, 60, "two workers", workers)
        clients = [
            p.python(
                "tests/client_script.py", POOL, str(i), str(requests), str(rows), name=f"client{i}"
            )
            for i in range(3)
        ]
        for c in clients:
            assert c.wait(120) == 0, p.log_of(c)
        summaries = [json.loads(p.log_of(c).strip().splitlines()[-1]) for c in clients]
        served = wait_until(
            lambda: sum(w.data["requests"] for w in live_workers(r, keys, POOL)) == 3 * requests,
            10,
            "heartbeats to report all requests",
        )
        assert served
        per_worker = [w.data["requests"] for w in live_workers(r, keys, POOL)]
    assert all(s["wrong"] == 0 and s["requests"] == requests for s in summaries)
    assert all(s["duplicates"] == 0 for s in summaries)
    assert sum(per_worker) == 3 * requests  # every request answered exactly once
    assert r.xlen(keys.pool_dead(POOL)) == 0


@pytest.mark.slow
def test_kill_9_worker_holding_a_request(
    settings: RedisSettings, tmp_path: Path, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    stream = keys.pool_requests(POOL)
    with procs(settings, tmp_path) as p:
        serve = ("policy", "serve", "--pool", POOL, "--policy", ECHO)
        doomed = p.cli(*serve, "--policy-arg", "stall_s=60", "--worker-id", "doomed", name="doomed")
        wait_until(lambda: live_workers(r, keys, POOL), 60, "doomed worker", [doomed])
        result: dict[str, object] = {}
        x = rows_x(2)
        x[0, 0] = STALL_MARKER

        def ask() -> None:
            with PolicyClient(POOL, settings, timeout_s=60) as client:
                result["actions"] = client.infer({"x": x}, [0, 1])
                result["duplicates"] = client.duplicates_dropped

        asker = threading.Thread(target=ask)
        asker.start()
        wait_until(
            lambda: r.xpending(stream, POLICY_GROUP)["pending"] == 1,
            20,
            "the doomed worker to hold it",
        )
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(5)
        # stall_s=0 is another policy identity, which a live pool refuses: let the dead
        # worker's heartbeat expire first (its request stays pending on it meanwhile)
        wait_until(lambda: not live_workers(r, keys, POOL), 20, "the heartbeat to expire")
        rescuer = p.cli(*serve, "--policy-arg", "stall_s=0", "--claim-idle-ms", "500", name="r")
        asker.join(60)
        assert not asker.is_alive()
        assert rescuer.poll() is None
    np.testing.assert_array_equal(result["actions"], expected_actions(x))  # type: ignore[arg-type]
    assert result["duplicates"] == 0
    assert r.xpending(stream, POLICY_GROUP)["pending"] == 0


def test_redis_restart_client_and_worker_reconnect(own_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = RedisSettings(url=own_server.url, prefix="restart:", retry_budget_s=20)
    with (
        ThreadWorker(settings, max_wait_ms=1.0) as w,
        PolicyClient(POOL, settings, timeout_s=20) as client,
    ):
        x = rows_x(2)
        np.testing.assert_array_equal(client.infer({"x": x}, [0, 1]), expected_actions(x))
        own_server.restart()
        y = rows_x(2, base=5)
        np.testing.assert_array_equal(client.infer({"x": y}, [0, 1]), expected_actions(y))
        # and again, so both sides are past the reconnect
        np.testing.assert_array_equal(client.infer({"x": x}, [0, 1]), expected_actions(x))
        assert w.stats.requests >= 3


@pytest.mark.slow
def test_sigterm_finishes_the_batch_in_flight(
    settings: RedisSettings, tmp_path: Path, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    with procs(settings, tmp_path) as p:
        worker = p.cli("policy", "serve", "--pool", POOL, "--policy", ECHO,
                       "--policy-arg", "stall_s=2", name="graceful")  # fmt: skip
        wait_until(lambda: live_workers(r, keys, POOL), 60, "the worker", [worker])
        result: dict[str, object] = {}
        x = rows_x(2)
        x[0, 0] = STALL_MARKER  # infer takes 2 s

        def ask() -> None:
            with PolicyClient(POOL, settings, timeout_s=30) as client:
                result["actions"] = client.infer({"x": x}, [0, 1])

        asker = threading.Thread(target=ask)
        asker.start()
        stream = keys.pool_requests(POOL)
        wait_until(lambda: r.xpending(stream, POLICY_GROUP)["pending"] == 1, 20, "in flight")
        worker.send_signal(signal.SIGTERM)  # mid-infer
        assert worker.wait(20) == 0, p.log_of(worker)
        asker.join(20)
    np.testing.assert_array_equal(result["actions"], expected_actions(x))  # type: ignore[arg-type]
    assert live_workers(r, keys, POOL) == []  # deregistered
    assert r.xpending(stream, POLICY_GROUP)["pending"] == 0
    assert r.xinfo_consumers(stream, POLICY_GROUP) == []  # and left the consumer group


def test_pools_cli_lists_spec_workers_and_queues(
    settings: RedisSettings, worker: PolicyWorker, r: redis.Redis
) -> None:
    from typer.testing import CliRunner

    from arena_eval.cli.app import app

    keys = Keys(settings.prefix)
    with PolicyClient(POOL, settings, timeout_s=10) as client:
        for i in range(3):
            client.infer({"x": rows_x(4, base=i)}, [0, 1, 2, 3])
    r.xadd(keys.pool_requests(POOL), {"junk": "1"})
    wait_until(lambda: r.xlen(keys.pool_dead(POOL)) == 1, 10, "a dead letter")
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    wait_until(
        lambda: live_workers(r, keys, POOL)[0].data["requests"] == 3, 10, "heartbeat counters"
    )
    out = CliRunner().invoke(app, ["pools", "--json"], env=env)
    assert out.exit_code == 0, out.output
    (pool,) = json.loads(out.output)["pools"]
    assert pool["pool"] == POOL and pool["spec"]["action_shape"] == [2, DIM]
    assert pool["spec"]["observations"] == {"x": {"dtype": "float32", "shape": [DIM]}}
    assert pool["dead_letters"] == 1 and pool["pending_requests"] == 0
    (w,) = pool["workers"]
    assert w["worker_id"] == worker.worker_id and w["heartbeat_age_s"] < 5
    assert w["mean_batch_rows"] == 4.0 and w["batches_per_s"] > 0
    table = CliRunner().invoke(app, ["pools"], env=env, terminal_width=200)
    assert (
        table.exit_code == 0
        and worker.worker_id in table.output
        and "dead_letters=1" in table.output
    )
