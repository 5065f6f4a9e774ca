"""docker/users-redis7.acl: on Redis 7 the sim role can use a pool but not act as one.

Redis 6.2 ACLs grant commands and key patterns separately, so a sim user that
must XADD to a request stream may also XREADGROUP it, and one that must GET a
pool's spec may also SET it. Redis 7 selectors tie commands to keys; these
tests run a job with the file's users on a real Redis 7 and check that a
hand-written sim client is refused everything a policy worker does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from arena_eval.broker.constants import POLICY_GROUP, SIM_GROUP
from arena_eval.broker.keys import Keys
from tests.acl_server import ACL_FILE_REDIS7, AclServer, cli_as, redis7_binary, run_job_as_roles

pytest.importorskip("gymnasium")

SERVE_ZERO = ["--pool", "p", "--policy", "zero", "--policy-arg", "action_shape=1x1"]


@pytest.fixture
def redis7(tmp_path: Path) -> Iterator[AclServer]:
    binary = redis7_binary()
    if binary is None:
        pytest.skip("no redis-server 7 or later on PATH or in /usr/bin (selectors need Redis 7)")
    server = AclServer(binary, ACL_FILE_REDIS7, tmp_path / "redis7").start()
    try:
        yield server
    finally:
        server.stop()


def test_redis7_roles_run_a_job(redis7: AclServer) -> None:
    run_job_as_roles(redis7)


def _a_pool_with_a_pending_request(admin: redis.Redis, keys: Keys) -> bytes:
    """Pool "p" as a policy worker leaves it: spec, one worker, one request read but not acked."""
    admin.sadd(keys.pools(), "p")
    admin.set(keys.pool_spec("p"), "{}")
    admin.sadd(keys.pool_workers("p"), "w1")
    admin.set(keys.pool_worker("p", "w1"), "{}")
    for stream in (keys.pool_requests("p"), keys.pool_host_requests("p", "h")):
        admin.xgroup_create(stream, POLICY_GROUP, id="0", mkstream=True)
    entry = admin.xadd(keys.pool_requests("p"), {"rid": "r1", "reply": keys.reply_stream("c1")})
    admin.xreadgroup(POLICY_GROUP, "w1", {keys.pool_requests("p"): ">"})
    admin.xadd(keys.reply_stream("c1"), {"data": "answer"})
    admin.xgroup_create(keys.units(), SIM_GROUP, id="0", mkstream=True)
    return entry  # type: ignore[no-any-return]


def test_redis7_sim_uses_a_pool_but_cannot_serve_or_answer_for_it(redis7: AclServer) -> None:
    keys = Keys()
    admin = redis7.client("admin")
    entry = _a_pool_with_a_pending_request(admin, keys)
    sim = redis7.client("sim")
    requests, host_requests = keys.pool_requests("p"), keys.pool_host_requests("p", "h")
    allowed: list[Callable[[], Any]] = [
        lambda: sim.get(keys.pool_spec("p")),
        lambda: sim.smembers(keys.pool_workers("p")),
        lambda: sim.mget([keys.pool_worker("p", "w1")]),
        lambda: sim.xadd(requests, {"rid": "r2", "reply": keys.reply_stream("mine")}),
        lambda: sim.xadd(host_requests, {"rid": "r3", "reply": keys.reply_stream("mine")}),
        lambda: sim.xread({keys.reply_stream("mine"): "0-0"}),
        lambda: sim.delete(keys.reply_stream("mine")),
        lambda: sim.xreadgroup(SIM_GROUP, "s1", {keys.units(): ">"}),
        lambda: sim.xautoclaim(keys.units(), SIM_GROUP, "s1", 0),
    ]
    for attempt in allowed:
        attempt()
    denied: list[Callable[[], Any]] = [
        lambda: sim.set(keys.pool_spec("p"), "{}"),  # rewrite the pool's spec
        lambda: sim.sadd(keys.pool_workers("p"), "fake"),  # join the pool
        lambda: sim.set(keys.pool_worker("p", "fake"), "{}"),  # heartbeat as a worker
        lambda: sim.srem(keys.pool_workers("p"), "w1"),
        lambda: sim.xreadgroup(POLICY_GROUP, "fake", {requests: ">"}),  # take requests
        lambda: sim.xreadgroup(POLICY_GROUP, "fake", {host_requests: ">"}),
        lambda: sim.xack(requests, POLICY_GROUP, entry),
        lambda: sim.xautoclaim(requests, POLICY_GROUP, "fake", 0),
        lambda: sim.xclaim(requests, POLICY_GROUP, "fake", 0, [entry]),
        lambda: sim.xrange(requests),  # read other sims' requests
        lambda: sim.xdel(requests, entry),
        lambda: sim.xadd(keys.reply_stream("c1"), {"data": "forged"}),  # answer for the pool
        lambda: sim.expire(keys.reply_stream("c1"), 1),
        lambda: sim.xadd(keys.pool_dead("p"), {"reason": "x"}),
        lambda: sim.sadd(keys.pools(), "p2"),
        lambda: sim.eval("return redis.call('SET', KEYS[1], '{}')", 1, keys.pool_spec("p")),
    ]
    for i, attempt in enumerate(denied):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
            pytest.fail(f"denied[{i}] was allowed")
    assert admin.get(keys.pool_spec("p")) == b"{}"
    assert admin.smembers(keys.pool_workers("p")) == {b"w1"}
    assert admin.xlen(keys.reply_stream("c1")) == 1


def test_redis7_policy_serve_as_sim_names_the_role(redis7: AclServer) -> None:
    out = cli_as(redis7.url("sim"), "policy", "serve", *SERVE_ZERO)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert "Redis user 'sim' may not run `arena-eval policy serve`" in errors[0]
    assert "needs the 'policy' role" in errors[0]
    assert "serving" not in out.stdout
    assert not redis7.client("admin").exists(Keys().pool_spec("p"))
