"""A worker whose terminal closes (SIGHUP) stops gracefully, as on SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis

from arena_eval.broker.fleet import live_sim_workers
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from tests.worker_procs import procs, wait_until

pytest.importorskip("gymnasium")


@pytest.mark.slow
def test_sim_worker_stops_gracefully_on_hang_up(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    with procs(settings, tmp_path) as running:
        sim = running.cli("sim", "serve", "--num-envs", "1", name="sim")
        wait_until(lambda: live_sim_workers(r, keys), 60, "the sim worker", [sim])
        sim.send_signal(signal.SIGHUP)
        assert sim.wait(60) == 0, running.log_of(sim)
        assert live_sim_workers(r, keys) == []  # it deregistered on its way out
