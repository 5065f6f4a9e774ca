"""Failover on a real 6-node Redis Cluster: a master killed with -9 mid-job loses nothing.

A private cluster (tests/redis_cluster.py, the system redis-server 7) with 2
policy workers and 2 sim workers runs a 40-episode Meta-World job twice: once
clean, once while the master that holds the job's results is killed with
SIGKILL and its replica takes over. Replication is asynchronous, so the dead
master may take acknowledged results, units or state changes with it; the
job must still complete with exactly 40 results, each stored once, equal
episode by episode to the clean run (episodes are deterministic per seed).
Also here: the observation bytes of a job land on every master.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from arena_eval.broker import jobs, results
from arena_eval.broker.cluster import is_cluster
from arena_eval.broker.connection import connect
from arena_eval.broker.jobs import JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from tests.redis_cluster import LocalCluster, cluster_binaries
from tests.test_jobs import POOL, TASK, start_pool, start_sims, submit, wait_ready
from tests.worker_procs import Procs, procs, wait_until

pytest.importorskip("metaworld")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(cluster_binaries() is None, reason="needs the system redis-server 7"),
    # its cluster is private: one lane (the embedded one) is enough
    pytest.mark.skipif(
        bool(os.environ.get("ARENA_TEST_REDIS_URL")), reason="runs in the embedded-server lane"
    ),
]

EPISODES = 40


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    node_set = LocalCluster(tmp_path / "cluster").start()
    try:
        yield node_set
    finally:
        node_set.stop()


@pytest.fixture
def cluster_settings(cluster: LocalCluster, tmp_path: Path) -> RedisSettings:
    prefix = f"f{secrets.token_hex(4)}:"
    return RedisSettings(url=cluster.url, prefix=prefix, home=tmp_path / "home")


@pytest.fixture
def fleet(cluster_settings: RedisSettings, tmp_path: Path) -> Iterator[Procs]:
    with procs(cluster_settings, tmp_path) as p:
        yield p


def _outcomes(r: redis.Redis, keys: Keys, job_id: str) -> list[tuple[int, bool, int, float]]:
    return [
        (e.index, e.success, e.length, round(float(e.return_ or 0.0), 4))
        for e in results.read_results(r, keys, job_id)
    ]


def _wait_completed(r: redis.Redis, keys: Keys, job_id: str, p: Procs) -> jobs.Job:
    def done() -> jobs.Job | None:
        try:
            job = jobs.get_job(r, keys, job_id)
        except redis.RedisError:
            return None  # mid-failover
        return job if job.state.terminal else None

    job = wait_until(done, 240, f"job {job_id} to end", p.procs)
    assert isinstance(job, jobs.Job)
    return job


def test_kill_9_of_a_master_mid_job_loses_no_episode(
    cluster: LocalCluster, cluster_settings: RedisSettings, fleet: Procs
) -> None:
    r = connect(cluster_settings)
    assert is_cluster(r)
    keys = Keys(cluster_settings.prefix)
    start_pool(fleet)
    start_pool(fleet)
    start_sims(fleet, 2, "--num-envs", "2")
    wait_ready(r, keys, fleet, sims=2)
    args = ("--task", TASK, "--pool", POOL, "--episodes", str(EPISODES), "--seed", "7")

    clean_id = submit(cluster_settings, *args)
    clean = _wait_completed(r, keys, clean_id, fleet)
    assert clean.state is JobState.COMPLETED, clean.reason
    expected = _outcomes(r, keys, clean_id)
    assert [o[0] for o in expected] == list(range(EPISODES))

    chaos_id = submit(cluster_settings, *args)
    results_key = keys.job_results(chaos_id)
    wait_until(lambda: r.hlen(results_key) >= 8, 120, "a fifth of the episodes", fleet.procs)
    victim = int(r.get_node_from_key(results_key).port)  # type: ignore[attr-defined]
    assert victim in cluster.masters()
    cluster.kill(victim)
    # the replica takes over within a few node timeouts; the job carries on
    wait_until(lambda: victim not in _masters_or_empty(cluster), 60, "failover")

    job = _wait_completed(r, keys, chaos_id, fleet)
    assert job.state is JobState.COMPLETED, job.reason
    got = _outcomes(r, keys, chaos_id)
    assert [o[0] for o in got] == list(range(EPISODES))  # each once: a hash field per episode
    assert got == expected
    cluster.restart(victim)  # rejoins as a replica; the cluster is whole again for teardown


def _masters_or_empty(cluster: LocalCluster) -> list[int]:
    try:
        return cluster.masters()
    except redis.RedisError:
        return []


def test_reconcile_requeues_only_the_lost_episodes(
    cluster: LocalCluster, cluster_settings: RedisSettings
) -> None:
    """Writes lost in a failover, replayed by hand: units gone, some results gone."""
    from arena_eval.broker import reconcile, units
    from arena_eval.broker.episode import EpisodeResult

    r = connect(cluster_settings)
    keys = Keys(cluster_settings.prefix)
    spec = jobs.JobSpec(TASK, POOL, 10, shard_size=4)
    job_id = jobs.submit(r, keys, spec)
    stored = [EpisodeResult(index=i, seed=i, success=True, length=5) for i in (0, 1, 2, 5, 9)]
    results.record(r, keys, job_id, "w", time.time(), stored, {}, {})
    units.drop_job_units(r, keys, job_id)  # the units' deletion survived, two results did not

    assert reconcile.reconcile(r, keys, now=time.time()) == []  # too young: its submit may run
    repairs = reconcile.reconcile(r, keys, grace_s=0)
    assert repairs == [reconcile.Repair(job_id, completed=False, requeued=5)]
    queued = sorted((u.start, u.count) for u in units.iter_units(r, keys) if u.job_id == job_id)
    assert queued == [(3, 1), (4, 1), (6, 2), (8, 1)]  # inside the job's shards 0-3, 4-7, 8-9
    assert reconcile.reconcile(r, keys, grace_s=0) == []  # units outstanding now

    units.drop_job_units(r, keys, job_id)
    rest = [EpisodeResult(index=i, seed=i, success=True, length=5) for i in (3, 4, 6, 7, 8)]
    r.delete(keys.job_reconcile(job_id))
    pipe = r.pipeline(transaction=False)
    for ep in rest:
        pipe.hset(keys.job_results(job_id), str(ep.index), ep.encode())  # completion write lost
    pipe.execute()
    assert jobs.get_job(r, keys, job_id).state is not JobState.COMPLETED
    assert reconcile.reconcile(r, keys, grace_s=0) == [reconcile.Repair(job_id, True, 0)]
    assert jobs.get_job(r, keys, job_id).state is JobState.COMPLETED


def _blob_traffic(cluster: LocalCluster) -> dict[int, tuple[int, int]]:
    """Per master: (GET calls, bytes received). Only blobs are read with GET on a sim
    worker's path (pool specs too, rarely, on the pool's master)."""
    out = {}
    for port in cluster.masters():
        node = redis.Redis(port=port, socket_timeout=2)
        try:
            gets = node.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
            out[port] = (int(gets), int(node.info("stats")["total_net_input_bytes"]))
        finally:
            node.close()
    return out


def test_observation_bytes_of_a_job_land_on_every_master(
    cluster: LocalCluster, cluster_settings: RedisSettings, fleet: Procs
) -> None:
    r = connect(cluster_settings)
    keys = Keys(cluster_settings.prefix)
    start_pool(fleet)
    # every request a blob, as large (camera) requests are by default
    for _ in range(4):
        fleet.cli("sim", "serve", "--num-envs", "2", name="sim", ARENA_BLOB_MIN_BYTES="1")
    wait_ready(r, keys, fleet, sims=4)
    before = _blob_traffic(cluster)
    job_id = submit(cluster_settings, "--task", TASK, "--pool", POOL, "--episodes", "32",
                    "--shard-size", "2")  # fmt: skip
    _wait_completed(r, keys, job_id, fleet)
    after = _blob_traffic(cluster)
    assert jobs.get_job(r, keys, job_id).state is JobState.COMPLETED
    requests = int(results.read_stats(r, keys, job_id)["requests"])
    gets = {p: after[p][0] - before[p][0] for p in after}
    received = {p: after[p][1] - before[p][1] for p in after}
    print(f"{requests} requests; blob GETs per master: {gets}; bytes received: {received}")
    assert sum(gets.values()) >= requests  # every request's payload was a blob
    assert all(n >= 0.05 * requests for n in gets.values()), gets  # on every master
    assert not list(r.scan_iter(match=f"{cluster_settings.prefix}rollout:*"))  # all deleted
