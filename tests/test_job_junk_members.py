"""Junk in the jobs set (``ZADD`` by hand with redis-cli): members that are not UTF-8 or
not a valid job id. ``status`` and ``results`` without an id skip them for the newest real
job; ``jobs prune`` removes old ones from the set and says so, and never crashes on them.

Real Redis and the real CLI through CliRunner.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from typer.testing import CliRunner, Result

from arena_eval.broker import jobs, results
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.jobs import JobSpec
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app

DAY = 86400.0
NOT_UTF8 = b"\xff\xfejunk"
NOT_AN_ID = b"not a job id"


def invoke(settings: RedisSettings, *args: str) -> Result:
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    return CliRunner().invoke(app, list(args), env=env)


def finished_job(r: redis.Redis, keys: Keys) -> str:
    job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="p", episodes=1))
    episode = EpisodeResult(
        index=0, seed=0, success=True, return_=1.0, length=5, metrics={},
        worker="w", wall_s=0.1, finished_at=time.time(),
    )  # fmt: skip
    results.record(r, keys, job_id, "w", time.time(), [episode], {"steps": 5}, {})
    return job_id


@pytest.mark.parametrize("junk", [NOT_UTF8, NOT_AN_ID], ids=["not-utf8", "not-an-id"])
def test_status_and_results_skip_a_junk_newest_member(
    settings: RedisSettings, r: redis.Redis, keys: Keys, junk: bytes
) -> None:
    job_id = finished_job(r, keys)
    r.zadd(keys.jobs(), {junk: time.time() + DAY})  # newest of all
    assert jobs.latest_job_id(r, keys) == job_id
    status = invoke(settings, "status", "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["job_id"] == job_id
    report = invoke(settings, "results", "--format", "json")
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["job_id"] == job_id


def test_prune_removes_old_junk_members_and_says_so(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    now = time.time()
    old = jobs.cancel(r, keys, finished_job(r, keys)).job_id
    r.zadd(keys.jobs(), {old: now - 10 * DAY}, xx=True)
    r.hset(keys.job(old), "finished", repr(now - 10 * DAY))
    r.zadd(keys.jobs(), {NOT_UTF8: now - 9 * DAY, NOT_AN_ID: now - 8 * DAY, b"\xfenew": now})

    dry = invoke(settings, "jobs", "prune", "--older-than", "7d", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert [p["job_id"] for p in report["pruned"]] == [old]
    assert report["junk"] == [NOT_UTF8.decode(errors="replace"), NOT_AN_ID.decode()]
    assert r.zcard(keys.jobs()) == 4  # a dry run deletes nothing

    out = invoke(settings, "jobs", "prune", "--older-than", "7d")
    assert out.exit_code == 0, out.output
    assert "pruned 1 job(s)" in out.stdout
    assert "removed 'not a job id' from the jobs set: not a job id" in out.stdout
    assert r.zrange(keys.jobs(), 0, -1) == [b"\xfenew"]  # newer than the cutoff: kept
