"""Busy fraction and mean batch: in the heartbeat, in ``arena-eval pools``, in ``bench saturation``.

Real Redis and real workers. What is checked is that the figures exist and
add up (a worker that ran a 50 ms forward pass was busy, every sim's request
shared a batch); the lead times them for real.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from arena_eval.benchmarks.decode_reuse import run_decode_reuse, run_pool_decode
from arena_eval.benchmarks.policies import AffineCostPolicy
from arena_eval.broker import lz4_into
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import live_workers
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app
from arena_eval.policy_worker.policy import Batch
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.client import PolicyClient
from tests.policies_for_tests import DIM, EchoPolicy
from tests.worker_procs import wait_until

POOL = "echo"


class SlowEcho(EchoPolicy):
    def infer(self, batch: Batch) -> np.ndarray:
        time.sleep(0.05)
        return super().infer(batch)


def test_pools_shows_the_busy_fraction(settings: RedisSettings, r: redis.Redis) -> None:
    worker = PolicyWorker(POOL, SlowEcho(stall_s=0), settings, max_wait_ms=1.0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    keys = Keys(settings.prefix)
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    try:
        with PolicyClient(POOL, settings, timeout_s=10) as client:
            for _ in range(4):
                client.infer({"x": np.zeros((2, DIM), np.float32)}, [0, 1])
        wait_until(
            lambda: live_workers(r, keys, POOL)[0].data["requests"] == 4, 10, "heartbeat counters"
        )
        out = CliRunner().invoke(app, ["pools", "--json"], env=env)
        table = CliRunner().invoke(app, ["pools"], env=env, terminal_width=200)
    finally:
        worker.stop()
        thread.join(10)
    assert out.exit_code == 0, out.output
    (w,) = json.loads(out.output)["pools"][0]["workers"]
    assert 0.0 < w["busy_fraction"] <= 1.0 and w["mean_batch_rows"] == 2.0
    assert table.exit_code == 0 and "busy" in table.output
    assert worker.stats.as_dict()["busy_fraction"] > 0.0


def test_affine_cost_policy_is_a_batch_of_zeros() -> None:
    policy = AffineCostPolicy(base_ms="0", row_ms="0")
    actions = policy.infer(Batch.of({"x": np.zeros((3, 2), np.float32)}))
    assert actions.shape == (3, 16, 36) and policy.spec().name == "affine-cost"


@pytest.mark.timeout(120)
def test_bench_saturation_reports_each_k(settings: RedisSettings) -> None:
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    args = ["bench", "saturation", "--clients", "1,2", "--seconds", "1", "--base-ms", "5"]
    res = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    points = json.loads(res.stdout)["points"]
    assert [p["clients"] for p in points] == [1, 2]
    for p in points:
        assert 0.0 < p["busy_fraction"] <= 1.0 and p["requests_per_s"] > 0
        assert 1.0 <= p["mean_batch_requests"] <= p["clients"]
    assert points[0]["mean_batch_rows"] == 4.0  # one sim: every batch is its 4 rows


@pytest.mark.skipif(not lz4_into.available(), reason="no LZ4_decompress_safe")
def test_bench_decode_compares_both_paths(settings: RedisSettings) -> None:
    for result in (run_decode_reuse(requests=10), run_pool_decode(settings, requests=10)):
        assert result["requests_per_side"] == 10
        assert result["fresh_decode_ms_p50"] > 0 and result["reused_decode_ms_p50"] > 0
