"""``arena-eval demo`` and ``arena-eval up``, run as a user would run them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from arena_eval.broker.connection import connect
from arena_eval.broker.fleet import live_sim_workers
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import live_workers
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.stack_cmd import DEMO_TASKS
from tests.worker_procs import REPO, child_env, wait_until

pytest.importorskip("metaworld")


def _env(settings: RedisSettings, home: Path, **extra: str) -> dict[str, str]:
    env = child_env(settings, ARENA_HOME=str(home), **extra)
    if not os.environ.get("ARENA_TEST_REDIS_URL"):
        env.pop("ARENA_REDIS_URL")  # the README path: the embedded server in ARENA_HOME
    return env


@pytest.mark.slow
def test_demo_end_to_end(settings: RedisSettings, tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", "demo", "--episodes", "2", "--num-envs", "2"],
        cwd=REPO, env=_env(settings, home, COLUMNS="100"), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    words = " ".join(out.stdout.split())
    assert "completed: 6 episodes, success_rate 1.000" in words  # 2 per task, 3 tasks
    for task in DEMO_TASKS:  # the per-task table: one row per task of the demo's suite
        assert re.search(rf"metaworld/{task} 1\.00 \(2/2\) \[0\.34, 1\.00\]", words), words
    assert "suite score 1.000 (95% CI" in words
    # it stopped what it started: no embedded server left running in this home
    if not os.environ.get("ARENA_TEST_REDIS_URL"):
        assert not (home / "redis.pid").exists()
        assert not (home / "redis.sock").exists()
        assert (home / "data").is_dir()  # the AOF data stays, results survive


@pytest.mark.slow
def test_up_supervises_and_stops_cleanly(
    settings: RedisSettings, r: redis.Redis, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = child_env(settings, ARENA_HOME=str(home))  # the test server, so we can watch it
    up = subprocess.Popen(
        [sys.executable, "-m", "arena_eval.cli", "up", "--sim-workers", "1", "--num-envs", "2",
         "--pool", "door", "--policy", "metaworld-expert", "--policy-arg", "task=door-open-v3"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    keys = Keys(settings.prefix)
    try:
        first = wait_until(lambda: live_sim_workers(r, keys), 90, "a sim worker", [up])
        victim = first[0].data["pid"]  # type: ignore[index]
        submit = subprocess.run(
            [sys.executable, "-m", "arena_eval.cli", "submit", "--task", "metaworld/door-open-v3",
             "--pool", "door", "--episodes", "4", "--num-envs", "2", "--wait", "--json"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stdout + submit.stderr
        # a crashed worker is restarted by the supervisor
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: any(w.data["pid"] != victim for w in live_sim_workers(r, keys)),
            60, "the sim worker to be restarted", [up],
        )  # fmt: skip
    finally:
        up.send_signal(signal.SIGINT)
        output = up.communicate(timeout=60)[0].decode(errors="replace")
    assert up.returncode == 0, output
    assert "restarted" in output
    # every child stopped gracefully: sim and policy workers deregistered themselves
    client = connect(settings)
    # (the SIGKILLed worker's heartbeat lingers until its TTL; it could not deregister)
    assert [w for w in live_sim_workers(client, keys) if w.data["pid"] != victim] == []
    assert live_workers(client, keys, "door") == []
