"""The ACL roles in docker/users.acl let each worker do its job and nothing more."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import redis

from arena_eval.broker import jobs
from arena_eval.broker.connection import connect
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.builtins.simple import ZeroPolicy
from arena_eval.policy_worker.server import PolicyWorker
from tests.redis_servers import TestServer
from tests.worker_procs import REPO, wait_until

pytest.importorskip("gymnasium")

ACL_FILE = REPO / "docker" / "users.acl"
SERVE_ZERO = ["--pool", "p", "--policy", "zero", "--policy-arg", "action_shape=1x1"]


def _apply_acl(server: TestServer) -> dict[str, str]:
    """Create the file's users on ``server`` (keeping the default user); return passwords."""
    admin = redis.Redis(port=server.port, password=server.password)
    passwords = {}
    for line in Path(ACL_FILE).read_text().splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "user" or words[1] == "default":
            continue
        admin.execute_command("ACL", "SETUSER", *words[1:])
        passwords[words[1]] = next(w[1:] for w in words if w.startswith(">"))
    return passwords


def test_worker_roles_run_a_job_and_are_denied_the_rest(own_server: TestServer) -> None:
    from arena_eval.sim_worker.service import SimWorker

    pw = _apply_acl(own_server)

    def as_user(user: str) -> RedisSettings:
        url = f"redis://{user}:{pw[user]}@127.0.0.1:{own_server.port}/0"
        return RedisSettings(url=url, retry_budget_s=2.0)

    policy = PolicyWorker("acl-pool", ZeroPolicy(action_shape="1x1"), as_user("policy"))
    sim = SimWorker(as_user("sim"), num_envs=2, block_ms=200)
    threads = [threading.Thread(target=w.run, daemon=True) for w in (policy, sim)]
    for t in threads:
        t.start()
    admin_r = connect(as_user("admin"))
    keys = Keys()
    try:
        job_id = jobs.submit(
            admin_r, keys, JobSpec(task="CartPole-v1", pool="acl-pool", episodes=3)
        )
        wait_until(lambda: jobs.get_job(admin_r, keys, job_id).state.terminal, 60, "the job")
        job = jobs.get_job(admin_r, keys, job_id)
        assert job.state is JobState.COMPLETED, job.reason
    finally:
        sim.stop()
        policy.stop()
        for t in threads:
            t.join(10)
    policy_r = redis.Redis.from_url(as_user("policy").url or "")
    sim_r = redis.Redis.from_url(as_user("sim").url or "")
    denied = [
        lambda: policy_r.hgetall(keys.job_results(job_id)),  # policy nodes never see results
        lambda: policy_r.xadd(keys.units(), {"job": "x"}),
        lambda: policy_r.flushall(),
        lambda: sim_r.flushall(),
        lambda: sim_r.config_get("*"),
        lambda: sim_r.keys("*"),
        lambda: sim_r.set("not-arena", "1"),
        lambda: sim_r.execute_command("ACL", "LIST"),
    ]
    for attempt in denied:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()


def _cli_as(server: TestServer, user: str, password: str, *args: str) -> CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARENA_")}
    env["ARENA_REDIS_URL"] = f"redis://{user}:{password}@127.0.0.1:{server.port}/0"
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("user", "args", "command", "role"),
    [
        ("policy", ["jobs"], "jobs", "admin"),
        ("policy", ["submit", "--task", "CartPole-v1", "--pool", "p", "--episodes", "1"],
         "submit", "admin"),
        ("policy", ["sim", "serve", "--num-envs", "1"], "sim serve", "sim"),
        ("sim", ["policy", "serve", *SERVE_ZERO], "policy serve", "policy"),
    ],
)  # fmt: skip
def test_denied_command_names_the_role_it_needs(
    own_server: TestServer, user: str, args: list[str], command: str, role: str
) -> None:
    pw = _apply_acl(own_server)
    out = _cli_as(own_server, user, pw[user], *args)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert f"Redis user {user!r} may not run `arena-eval {command}`" in errors[0]
    assert f"needs the {role!r} role" in errors[0]
    assert pw[user] not in out.stdout + out.stderr
    assert "serving" not in out.stdout and "sim worker" not in out.stdout  # refused before


def test_sim_role_cannot_join_a_pool(own_server: TestServer) -> None:
    pw = _apply_acl(own_server)
    keys = Keys()
    out = _cli_as(own_server, "sim", pw["sim"], "policy", "serve", *SERVE_ZERO)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "serving" not in out.stdout
    admin = redis.Redis(port=own_server.port, password=own_server.password)
    assert not admin.sismember(keys.pools(), "p")
    assert not admin.exists(keys.pool_spec("p"), keys.pool_workers("p"))  # nothing written first
    sim_r = redis.Redis.from_url(f"redis://sim:{pw['sim']}@127.0.0.1:{own_server.port}/0")
    for attempt in (
        lambda: sim_r.sadd(keys.pools(), "p"),
        lambda: sim_r.xadd(keys.pool_dead("p"), {"reason": "x"}),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
