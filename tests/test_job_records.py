"""Job records without workers: metrics arithmetic, the state machine, write-once results,
the unit queue and the stable output formats. Real Redis, no simulator."""

from __future__ import annotations

import csv
import io
import json
import random
import time

import pytest
import redis
from typer.testing import CliRunner

from arena_eval.broker import jobs, results, streams, units
from arena_eval.broker.constants import SIM_GROUP
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.jobs import JobNotFound, JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.metrics import LatencyHistogram, summarize_episodes, wilson_interval
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app

SPEC = JobSpec(task="CartPole-v1", pool="p", episodes=10, shard_size=4)


def cli_env(settings: RedisSettings) -> dict[str, str]:
    return {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}


def episode(i: int, success: bool, length: int = 10, **metrics: float) -> EpisodeResult:
    return EpisodeResult(
        index=i, seed=100 + i, success=success, return_=float(length), length=length,
        metrics=dict(metrics), worker="w", wall_s=0.1, finished_at=1.0e9,
    )  # fmt: skip


# -- metrics -------------------------------------------------------------------------------
def test_wilson_interval_known_values() -> None:
    # reference values from statsmodels' proportion_confint(method="wilson")
    lo, hi = wilson_interval(28, 30)
    assert lo == pytest.approx(0.78677, abs=1e-4) and hi == pytest.approx(0.98152, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-4) and hi == pytest.approx(0.76341, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.0 < hi < 0.2
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and 0.8 < lo < 1.0
    # symmetric: failures mirror successes
    a, b = wilson_interval(7, 19)
    c, d = wilson_interval(12, 19)
    assert a == pytest.approx(1 - d) and b == pytest.approx(1 - c)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_histogram_quantiles_within_bucket_error() -> None:
    rng = random.Random(0)
    values = [rng.uniform(0.5, 50.0) for _ in range(20_000)]
    hist = LatencyHistogram()
    for v in values:
        hist.add(v)
    values.sort()
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert hist.quantile(q) == pytest.approx(exact, rel=0.10), q
    assert LatencyHistogram().quantile(0.5) is None
    # round trip through hash fields, as sim workers HINCRBY them into Redis
    again = LatencyHistogram.from_fields({**hist.fields(), "steps": "5", "sum:infer_ms": "1.5"})
    assert again.counts == hist.counts


def test_histogram_merges_in_redis(r: redis.Redis, keys: Keys) -> None:
    stats = keys.job_stats("j1")
    a, b = LatencyHistogram(), LatencyHistogram()
    for ms in (1.0, 1.0, 2.0, 100.0):
        a.add(ms)
    for ms in (1.0, 3.0):
        b.add(ms)
    for h in (a, b):
        for name, n in h.fields().items():
            r.hincrby(stats, name, n)
    merged = LatencyHistogram.from_fields(results.read_stats(r, keys, "j1"))
    assert merged.total == 6
    assert merged.quantile(0.5) == pytest.approx(1.0, rel=0.1)
    assert merged.quantile(1.0) == pytest.approx(100.0, rel=0.1)


def test_summarize_episodes() -> None:
    eps = [episode(0, True, 10, near=1.0), episode(1, False, 30, near=0.0), episode(2, True, 20)]
    m = summarize_episodes(eps)
    assert m["num_episodes"] == 3 and m["successes"] == 2
    assert m["success_rate"] == pytest.approx(2 / 3)
    assert m["mean_length"] == 20 and m["metric_means"] == {"near": 0.5}
    assert summarize_episodes([])["success_rate"] is None


# -- specs, shards, submit -----------------------------------------------------------------
def test_shard_splitting() -> None:
    assert units.split_shards(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert units.split_shards(3, 8) == [(0, 3)]
    assert units.split_shards(8, 4) == [(0, 4), (4, 4)]
    for n, k in ((1, 1), (97, 7), (30, 8)):
        shards = units.split_shards(n, k)
        covered = [i for s, c in shards for i in range(s, s + c)]
        assert covered == list(range(n)) and all(1 <= c <= k for _, c in shards)
    # default: two units' worth of env slots
    assert JobSpec(task="t", pool="p", episodes=30, num_envs=3).effective_shard_size() == 6
    assert JobSpec(task="t", pool="p", episodes=5).effective_shard_size() == 5


@pytest.mark.parametrize(
    "kwargs",
    [{"episodes": 0}, {"pool": "a b"}, {"pool": "x:y"}, {"task": ""}, {"seed": -1},
     {"num_envs": 0}, {"shard_size": 0}, {"max_steps": 0}],
)  # fmt: skip
def test_spec_validation(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"task": "CartPole-v1", "pool": "p", "episodes": 3}
    with pytest.raises(ConfigError):
        JobSpec(**{**base, **kwargs})  # type: ignore[arg-type]


def test_submit_writes_record_and_units(r: redis.Redis, keys: Keys) -> None:
    job_id = jobs.submit(r, keys, SPEC)
    job = jobs.get_job(r, keys, job_id)
    assert job.state is JobState.QUEUED and job.spec == SPEC and job.total == 10
    assert r.hget(keys.job(job_id), "state") == b"queued"  # readable with redis-cli
    assert [(u.job_id, u.start, u.count) for u in units.iter_units(r, keys)] == [
        (job_id, 0, 4), (job_id, 4, 4), (job_id, 8, 2),
    ]  # fmt: skip
    assert jobs.latest_job_id(r, keys) == job_id
    with pytest.raises(JobNotFound, match="arena-eval jobs"):
        jobs.get_job(r, keys, "nope")


def test_transitions_terminal_is_final(r: redis.Redis, keys: Keys) -> None:
    job_id = jobs.submit(r, keys, SPEC)
    assert jobs.mark_waiting(r, keys, job_id, "no pool")
    assert jobs.get_job(r, keys, job_id).reason == "no pool"
    assert jobs.mark_running(r, keys, job_id)
    assert not jobs.mark_waiting(r, keys, job_id, "late")  # running does not go back
    job = jobs.get_job(r, keys, job_id)
    assert job.state is JobState.RUNNING and job.started is not None
    assert jobs.fail(r, keys, job_id, "first reason")
    assert not jobs.fail(r, keys, job_id, "second reason")
    cancelled = jobs.cancel(r, keys, job_id)  # not an error: reports how it ended
    assert cancelled.state is JobState.FAILED and cancelled.reason == "first reason"
    assert cancelled.finished is not None
    assert list(units.iter_units(r, keys)) == []  # fail dropped the queued units


def test_results_write_once_and_completion(r: redis.Redis, keys: Keys) -> None:
    job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="p", episodes=3))
    now = time.time()
    first = [episode(0, True, 10), episode(1, False, 20)]
    assert results.record(r, keys, job_id, "w1", now, first, {"steps": 30}, {}) == (2, False)
    # a retried unit re-runs episode 1 (different outcome) and finishes episode 2
    again = [episode(1, True, 99), episode(2, True, 12)]
    assert results.record(r, keys, job_id, "w2", now, again, {"steps": 111}, {}) == (1, True)
    # once more: nothing new, and the job does not "complete" twice
    assert results.record(r, keys, job_id, "w2", now, again, {}, {}) == (0, False)
    stored = results.read_results(r, keys, job_id)
    assert [e.index for e in stored] == [0, 1, 2]
    assert stored[1].length == 20  # the first write wins
    stats = results.read_stats(r, keys, job_id)
    assert stats["episodes"] == "3" and stats["successes"] == "2" and stats["length_sum"] == "42"
    assert stats["steps"] == "141"  # work counters include re-runs, by design
    assert jobs.get_job(r, keys, job_id).state is JobState.COMPLETED
    assert results.existing(r, keys, job_id, range(5)) == {0, 1, 2}
    assert set(results.read_workers(r, keys, job_id)) == {"w1", "w2"}


def test_results_after_cancel_do_not_complete(r: redis.Redis, keys: Keys) -> None:
    job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="p", episodes=1))
    jobs.cancel(r, keys, job_id)
    written = results.record(r, keys, job_id, "w", time.time(), [episode(0, True)], {}, {})
    assert written == (1, False)
    assert jobs.get_job(r, keys, job_id).state is JobState.CANCELLED


# -- the unit queue ------------------------------------------------------------------------
def test_lease_renew_requeue_and_takeover(r: redis.Redis, keys: Keys) -> None:
    job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="p", episodes=2, shard_size=1))
    raw = streams.raw_client(r)
    (a,) = units.read_new(r, keys, "alice", 100)
    assert isinstance(a, units.WorkUnit) and a.job_id == job_id and a.indices == range(0, 1)
    assert units.renew(r, keys, a.entry_id, "alice")
    assert not units.renew(r, keys, a.entry_id, "bob")  # only the holder renews
    time.sleep(0.15)
    claimed, _ = units.claim_stale(raw, keys, "bob", 100)
    assert [u.entry_id for u in claimed if isinstance(u, units.WorkUnit)] == [a.entry_id]
    assert not units.renew(r, keys, a.entry_id, "alice")  # alice lost it: no stealing back
    assert not units.requeue(r, keys, a, "alice")
    assert units.requeue(r, keys, a, "bob")  # graceful hand-back: a fresh entry at the tail
    rest = [(u.start, u.entry_id != a.entry_id) for u in units.iter_units(r, keys)]
    assert rest == [(1, True), (0, True)]
    assert r.xpending(keys.units(), SIM_GROUP)["pending"] == 0


def test_drop_job_units_and_garbage(r: redis.Redis, keys: Keys) -> None:
    keep = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="p", episodes=4, shard_size=2))
    drop = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="p", episodes=6, shard_size=2))
    r.xadd(keys.units(), {"junk": "1"})
    assert units.drop_job_units(r, keys, drop) == 3
    assert {u.job_id for u in units.iter_units(r, keys)} == {keep}
    got = [units.read_new(r, keys, "c", 10)[0] for _ in range(3)]
    assert sum(isinstance(g, str) for g in got) == 1  # the garbage entry comes back as its id


# -- CLI output formats --------------------------------------------------------------------
def test_results_csv_and_json_are_stable(
    r: redis.Redis, keys: Keys, settings: RedisSettings
) -> None:
    job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="p", episodes=2))
    eps = [episode(1, False, 7, obj=0.5, max_obj=0.9), episode(0, True, 5, obj=0.1, max_obj=0.2)]
    results.record(r, keys, job_id, "w", time.time(), eps, {}, {})
    runner = CliRunner()
    out = runner.invoke(app, ["results", job_id, "--format", "csv"], env=cli_env(settings))
    assert out.exit_code == 0, out.output
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0] == ["index", "seed", "success", "return", "length", "wall_s", "worker",
                       "finished_at", "task", "task_episode", "m.max_obj", "m.obj"]  # fmt: skip
    assert [row[0] for row in rows[1:]] == ["0", "1"]
    # rows stored without a task read as the job's one task, with their index in it
    assert [row[8:10] for row in rows[1:]] == [["CartPole-v1", "0"], ["CartPole-v1", "1"]]
    out = runner.invoke(app, ["results", job_id, "--format", "json"], env=cli_env(settings))
    report = json.loads(out.stdout)
    assert set(report) == {
        "job_id", "state", "reason", "spec", "metrics", "tasks", "suite", "episodes",
    }  # fmt: skip
    assert [t["task"] for t in report["tasks"]] == ["CartPole-v1"]
    assert report["tasks"][0]["episodes"] == 2 and report["suite"]["score"] == 0.5
    assert set(report["metrics"]) == {
        "num_episodes", "successes", "success_rate", "wilson_low", "wilson_high",
        "mean_length", "mean_return", "metric_means",
    }  # fmt: skip
    assert report["metrics"]["success_rate"] == 0.5 and report["state"] == "completed"
    assert [e["index"] for e in report["episodes"]] == [0, 1]
    assert report["metrics"]["metric_means"] == {"max_obj": pytest.approx(0.55), "obj": 0.3}


def test_cli_jobs_status_cancel(r: redis.Redis, keys: Keys, settings: RedisSettings) -> None:
    runner = CliRunner()
    env = cli_env(settings)
    out = runner.invoke(app, ["submit", "--task", "CartPole-v1", "--pool", "nobody",
                              "--episodes", "3", "--json"], env=env)  # fmt: skip
    assert out.exit_code == 0, out.output
    job_id = json.loads(out.stdout)["job_id"]
    s = json.loads(runner.invoke(app, ["status", "--json"], env=env).stdout)
    assert s["job_id"] == job_id and s["state"] == "queued" and s["total"] == 3
    assert "arena-eval sim serve" in s["hint"]  # nothing would ever run it: say so
    listed = json.loads(runner.invoke(app, ["jobs", "--json"], env=env).stdout)["jobs"]
    assert [j["job_id"] for j in listed] == [job_id]
    out = runner.invoke(app, ["cancel", job_id], env=env)
    assert out.exit_code == 0 and "cancelled" in out.stdout
    assert jobs.get_job(r, keys, job_id).state is JobState.CANCELLED
    assert list(units.iter_units(r, keys)) == []
    out = runner.invoke(app, ["status", "nope"], env=env)
    assert isinstance(out.exception, JobNotFound) and "arena-eval jobs" in str(out.exception)
    human = runner.invoke(app, ["status", job_id], env=env)
    assert human.exit_code == 0 and "cancelled" in human.stdout
    assert runner.invoke(app, ["workers", "--json"], env=env).exit_code == 0


def test_a_unit_that_keeps_killing_workers_fails_its_job(
    r: redis.Redis, keys: Keys, settings: RedisSettings
) -> None:
    from arena_eval.sim_worker.service import SimWorker

    job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="p", episodes=2))
    raw = streams.raw_client(r)
    units.read_new(r, keys, "died-1", 10)
    units.claim_stale(raw, keys, "died-2", 0)  # second delivery; that worker died too
    time.sleep(0.15)
    worker = SimWorker(settings, lease_ms=100, max_deliveries=2, block_ms=10)
    assert worker.queue.next_unit() is None  # third delivery: refused
    job = jobs.get_job(r, keys, job_id)
    assert job.state is JobState.FAILED and "taken over 2 times" in job.reason
    assert list(units.iter_units(r, keys)) == []
    assert r.xpending(keys.units(), SIM_GROUP)["pending"] == 0
