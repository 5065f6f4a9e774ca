"""The README's "your own loop" example runs against a real pool and reports metrics."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.registry import load_policy
from arena_eval.policy_worker.server import PolicyWorker
from tests.worker_procs import REPO, child_env

pytest.importorskip("metaworld")


@pytest.mark.slow
def test_remote_policy_loop_example(settings: RedisSettings, tmp_path: Path) -> None:
    policy = load_policy("metaworld-expert", {"task": "door-open-v3"})
    worker = PolicyWorker("door", policy, settings, max_wait_ms=1.0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        out = subprocess.run(
            [sys.executable, "examples/remote_policy_loop.py", "--pool", "door",
             "--num-envs", "2", "--steps", "400"],
            cwd=REPO, env=child_env(settings), capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        worker.stop()
        thread.join(10)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    # later resets are unseeded (it is a user's loop), so the exact outcome varies:
    # check that episodes finished, were scored, and came from the pool
    assert metrics["num_episodes"] >= 1
    assert 0.0 <= metrics["success_rate"] <= 1.0
    assert worker.stats.requests == 400  # chunk length 1: one request (both envs) per step
