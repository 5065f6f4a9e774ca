"""Suites: one job over many tasks, per-task results, paired comparison (issue #9, 2-4).

The statistics are checked against scipy on fixed tables (scipy is a test dependency only:
the product computes them in pure Python). The suite jobs run real Meta-World through real
policy and sim workers against real Redis; each test would fail if what it names broke:
seeds that depend on the worker layout, a unit that mixes tasks, a row without its task or
instruction, a table with a task missing, a comparison that does not pair.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
import redis
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from arena_eval.broker import jobs, results, status
from arena_eval.broker.compare import (
    compare_episodes,
    mcnemar_exact,
    newcombe_interval,
    paired_diff_interval,
    two_proportion_test,
)
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.per_task import TASK_COLUMNS, per_task, suite_score
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import PolicySpec
from arena_eval.cli.app import app
from arena_eval.policy_worker.policy import Batch, InferResult, Policy
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.envs.metaworld_tasks import INSTRUCTIONS, MT10, MT50
from arena_eval.sim_worker.envs.suites import SUITES, instruction_for, suite_tasks
from arena_eval.sim_worker.service import SimWorker
from tests.test_jobs import start_pool, start_sims, wait_ready
from tests.worker_procs import Procs, procs

DOOR, DRAWER = "metaworld/door-open-v3", "metaworld/drawer-open-v3"


# -- the job spec of a suite -------------------------------------------------------------------
def test_a_suite_is_units_of_one_task_with_seeds_from_task_and_index() -> None:
    spec = JobSpec(task="", tasks=(DOOR, DRAWER, "CartPole-v1"), pool="p", episodes=5,
                   shard_size=2, seed=100)  # fmt: skip
    assert spec.task == DOOR and spec.total_episodes == 15
    shards = spec.shards()
    assert shards == [(0, 2), (2, 2), (4, 1), (5, 2), (7, 2), (9, 1), (10, 2), (12, 2), (14, 1)]
    for start, count in shards:  # no unit spans two tasks
        assert spec.locate(start)[0] == spec.locate(start + count - 1)[0]
    assert spec.locate(7) == (1, DRAWER, 2)
    # the seed depends on (task, index in the task) only: the same for every task's episode i
    assert [spec.episode_seed(g) for g in (2, 7, 12)] == [102, 102, 102]
    # a single-task job is a suite of one, and its seeds are what they always were
    one = JobSpec(task=DOOR, pool="p", episodes=30, seed=7)
    assert one.tasks == (DOOR,) and [one.episode_seed(i) for i in (0, 29)] == [7, 36]
    assert one.for_task(DOOR) == one and spec.for_task(DRAWER).tasks == (DRAWER,)
    # stored specs from before suites (no "tasks") read as a single-task job
    old = JobSpec.from_json(json.dumps({"task": DOOR, "pool": "p", "episodes": 3}))
    assert old.tasks == (DOOR,) and old.total_episodes == 3
    assert JobSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError, match="must not repeat"):
        JobSpec(task="", tasks=(DOOR, DOOR), pool="p", episodes=1)
    with pytest.raises(ConfigError, match="first of tasks"):
        JobSpec(task=DRAWER, tasks=(DOOR, DRAWER), pool="p", episodes=1)


def test_suite_tables_match_metaworld_and_every_task_has_an_instruction() -> None:
    env_dict = pytest.importorskip("metaworld.env_dict")
    assert list(MT10) == list(env_dict.MT10_V3)
    assert list(MT50) == list(env_dict.MT50_V3)
    assert set(INSTRUCTIONS) == set(env_dict.ALL_V3_ENVIRONMENTS)
    assert suite_tasks("metaworld/mt10") == tuple(f"metaworld/{t}" for t in MT10)
    assert len(SUITES["metaworld/mt50"]) == 50
    assert instruction_for(DOOR) == "open the door"
    assert all(instruction_for(f"metaworld/{t}") for t in MT50)
    assert len(set(INSTRUCTIONS.values())) == 50  # no two tasks share an instruction
    assert instruction_for("CartPole-v1") == ""  # gymnasium tasks carry none
    with pytest.raises(ConfigError, match="metaworld/mt10"):
        suite_tasks("metaworld/mt11")


# -- statistics against scipy ------------------------------------------------------------------
@pytest.mark.parametrize(("a_only", "b_only"), [(3, 11), (0, 7), (5, 5), (12, 2), (0, 0), (40, 61)])
def test_exact_mcnemar_is_scipys_two_sided_binomial_test(a_only: int, b_only: int) -> None:
    n = a_only + b_only
    expected = scipy_stats.binomtest(a_only, n, 0.5).pvalue if n else 1.0
    assert mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("s1", "n1", "s2", "n2"), [(18, 30, 26, 30), (5, 20, 5, 25), (0, 10, 4, 12)]
)
def test_two_proportion_test_is_the_uncorrected_chi_square_of_the_table(
    s1: int, n1: int, s2: int, n2: int
) -> None:
    table = [[s1, n1 - s1], [s2, n2 - s2]]
    expected = scipy_stats.chi2_contingency(table, correction=False).pvalue
    assert two_proportion_test(s1, n1, s2, n2) == pytest.approx(expected, rel=1e-9)


def test_wilson_intervals_of_the_per_task_rows_are_scipys() -> None:
    eps = [_ep(i, DOOR, i, i < 7) for i in range(10)] + [_ep(10 + i, DRAWER, i, True)
                                                          for i in range(4)]  # fmt: skip
    door, drawer = per_task(eps, [DOOR, DRAWER])
    for row, (k, n) in ((door, (7, 10)), (drawer, (4, 4))):
        ci = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert (row.wilson_low, row.wilson_high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert (door.episodes, door.successes, door.success_rate) == (10, 7, 0.7)
    assert list(door.to_dict()) == list(TASK_COLUMNS)
    # the suite score is the mean over tasks (not the pooled rate 11/14)
    score = suite_score([door, drawer])
    assert score.score == pytest.approx(0.85) and score.tasks == 2
    p1, p2 = 9 / 14, 6 / 8  # Agresti-Coull estimates in the variance
    half = 1.959963984540054 * np.sqrt(p1 * (1 - p1) / 14 + p2 * (1 - p2) / 8) / 2
    assert (score.low, score.high) == pytest.approx((0.85 - half, min(1.0, 0.85 + half)))


def test_paired_comparison_of_a_fixed_table() -> None:
    # 30 paired episodes of one task: 10 both, 12 neither, A-only 2, B-only 6
    outcomes = (
        [(True, True)] * 10 + [(False, False)] * 12 + [(True, False)] * 2 + [(False, True)] * 6
    )
    spec = JobSpec(task=DOOR, pool="a", episodes=30)
    eps_a = [_ep(i, DOOR, i, a) for i, (a, _b) in enumerate(outcomes)]
    eps_b = [_ep(i, DOOR, i, b) for i, (_a, b) in enumerate(outcomes)]
    out = compare_episodes(spec, eps_a, JobSpec(task=DOOR, pool="b", episodes=30), eps_b)
    assert out["paired"] and out["why_unpaired"] == ""
    row = out["tasks"][0]
    assert (row["a_only"], row["b_only"], row["both"], row["neither"]) == (2, 6, 10, 12)
    assert (row["rate_a"], row["rate_b"]) == (12 / 30, 16 / 30)
    assert row["diff"] == pytest.approx(4 / 30)
    assert row["p_value"] == pytest.approx(scipy_stats.binomtest(2, 8, 0.5).pvalue)
    assert row["p_value"] == pytest.approx(0.2890625)  # 2 * (1 + 8 + 28) / 256
    assert (row["diff_low"], row["diff_high"]) == pytest.approx(paired_diff_interval(2, 6, 30))
    assert row["diff_low"] < row["diff"] < row["diff_high"]
    assert out["overall"]["p_value"] == row["p_value"] and out["overall"]["pairs"] == 30
    # other seeds: nothing pairs, so the two-proportion test, and the output says so
    other = JobSpec(task=DOOR, pool="b", episodes=30, seed=1000)
    out = compare_episodes(spec, eps_a, other, eps_b)
    assert not out["paired"] and "different seeds" in out["why_unpaired"]
    row = out["tasks"][0]
    assert row["test"] == "two-proportion-z" and row["a_only"] is None
    table = [[12, 18], [16, 14]]
    assert row["p_value"] == pytest.approx(
        scipy_stats.chi2_contingency(table, correction=False).pvalue
    )
    assert (row["diff_low"], row["diff_high"]) == pytest.approx(newcombe_interval(12, 30, 16, 30))


def _ep(index: int, task: str, i: int, success: bool) -> EpisodeResult:
    return EpisodeResult(index=index, length=10 + i, success=success, seed=i, task=task,
                         task_episode=i, wall_s=0.5, worker="w")  # fmt: skip


# -- a suite job through real workers -----------------------------------------------------------
class InstructedZero(Policy):
    """A language-conditioned stand-in: needs an instruction, records each row's context."""

    def __init__(self, action_dim: int) -> None:
        self.action_dim = action_dim
        self.seen: list[tuple[str, str, str]] = []  # (episode id, task, instruction)
        self.lock = threading.Lock()

    def spec(self) -> PolicySpec:
        return PolicySpec(name="instructed-zero", action_shape=(1, self.action_dim),
                          needs_instruction=True)  # fmt: skip

    def infer(self, batch: Batch) -> InferResult:
        with self.lock:
            self.seen += zip(batch.episode_ids, batch.tasks, batch.instructions, strict=True)
        return np.zeros((batch.rows, 1, self.action_dim), np.float32)


def _serve(policy: Policy, pool: str, settings: RedisSettings) -> tuple[PolicyWorker, Any]:
    worker = PolicyWorker(pool, policy, settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, thread


@pytest.mark.usefixtures("needs_metaworld")
def test_each_unit_sends_its_tasks_instruction_and_rows_record_the_task(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    policy = InstructedZero(action_dim=4)
    worker, thread = _serve(policy, "vla", settings)
    try:
        spec = JobSpec(task="", tasks=(DOOR, DRAWER), pool="vla", episodes=2, max_steps=3,
                       num_envs=2, shard_size=1)  # fmt: skip
        job_id = jobs.submit(r, keys, spec)
        SimWorker(settings, num_envs=2, block_ms=100).run(burst=True)
    finally:
        worker.stop()
        thread.join(10)
    assert jobs.get_job(r, keys, job_id).state is JobState.COMPLETED
    rows = results.read_results(r, keys, job_id)
    got = [(e.index, e.task, e.task_episode, e.seed) for e in rows]
    assert got == [(0, DOOR, 0, 0), (1, DOOR, 1, 1), (2, DRAWER, 0, 0), (3, DRAWER, 1, 1)]
    by_index = {f"{job_id}:{e.index}": e.task for e in rows}
    assert policy.seen and {eid for eid, _t, _i in policy.seen} == set(by_index)
    for eid, task, instruction in policy.seen:  # every row: its own task and instruction
        assert task == by_index[eid]
        assert instruction == {DOOR: "open the door", DRAWER: "open the drawer"}[task]
    report = status.results_report(r, keys, job_id)
    assert [(t["task"], t["episodes"]) for t in report["tasks"]] == [(DOOR, 2), (DRAWER, 2)]


@pytest.mark.usefixtures("needs_metaworld")
def test_a_task_without_instruction_on_a_pool_that_needs_one_fails_the_job_readably(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    worker, thread = _serve(InstructedZero(action_dim=1), "vla1", settings)
    try:
        job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="vla1", episodes=2))
        SimWorker(settings, num_envs=2, block_ms=100).run(burst=True)
    finally:
        worker.stop()
        thread.join(10)
    job = jobs.get_job(r, keys, job_id)
    assert job.state is JobState.FAILED
    assert "needs_instruction" in job.reason and "CartPole-v1" in job.reason


@pytest.fixture
def needs_metaworld() -> None:
    pytest.importorskip("metaworld")


def _cli(settings: RedisSettings, *args: str) -> Any:
    env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
    out = CliRunner().invoke(app, list(args), env=env)
    assert out.exit_code == 0, out.output
    return out


def _episodes(r: redis.Redis, keys: Keys, job_id: str) -> list[dict[str, Any]]:
    """Each episode's outcome, without who ran it or when."""
    drop = {"worker", "wall_s", "finished_at"}
    return [
        {k: v for k, v in e.to_dict().items() if k not in drop}
        for e in results.read_results(r, keys, job_id)
    ]


@pytest.mark.slow
@pytest.mark.usefixtures("needs_metaworld")
def test_mt10_suite_per_task_results_identical_for_any_worker_layout_and_paired(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Any
) -> None:
    with procs(settings, tmp_path) as p:
        _mt10_suite(settings, r, keys, p)


def _mt10_suite(settings: RedisSettings, r: redis.Redis, keys: Keys, p: Procs) -> None:
    expert = ("--policy", "metaworld-expert")  # multi-task: one pool serves the suite
    start_pool(p, "expert", *expert)
    start_pool(p, "expert2", *expert)
    (alone,) = start_sims(p, 1, "--num-envs", "4")
    wait_ready(r, keys, p, sims=1)
    wait_ready(r, keys, p, sims=1, pool_name="expert2")
    suite = ("submit", "--suite", "metaworld/mt10", "--episodes", "3")
    out = _cli(settings, *suite, "--pool", "expert", "--wait", "--json")
    first = json.loads(out.stdout)
    assert first["state"] == "completed", first["reason"]
    report = json.loads(_cli(settings, "results", first["job_id"], "--format", "json").stdout)
    assert len(report["episodes"]) == 30
    assert [t["task"] for t in report["tasks"]] == list(SUITES["metaworld/mt10"])
    assert all(t["episodes"] == 3 for t in report["tasks"])
    assert sum(t["success_rate"] >= 0.8 for t in report["tasks"]) >= 8
    assert report["suite"]["tasks"] == 10 and report["suite"]["score"] >= 0.8
    # the same suite on 3 sim workers of 1 env each, on two pools at once
    alone.terminate()
    assert alone.wait(30) == 0  # a clean stop: it leaves the fleet
    p.procs.remove(alone)
    start_sims(p, 3, "--num-envs", "1")
    wait_ready(r, keys, p, sims=3)
    out = _cli(settings, *suite, "--pool", "expert", "--pool", "expert2", "--wait", "--json")
    finals = json.loads(out.stdout)["jobs"]
    assert [f["state"] for f in finals] == ["completed", "completed"]
    spread, other_pool = (f["job_id"] for f in finals)
    assert len(results.read_workers(r, keys, spread)) >= 2  # the layout did change
    reference = _episodes(r, keys, first["job_id"])
    assert _episodes(r, keys, spread) == reference
    assert _episodes(r, keys, other_pool) == reference
    assert len({e["length"] for e in reference}) > 5  # episodes differ: seeds and tasks
    # the per-task table and the paired comparison, as a user sees them
    table = " ".join(_cli(settings, "results", spread).stdout.split())
    assert "metaworld/peg-insert-side-v3 1.00 (3/3)" in table, table
    assert "metaworld/mt10 score" in table
    cmp = json.loads(_cli(settings, "compare", first["job_id"], other_pool, "--json").stdout)
    assert cmp["paired"] and len(cmp["tasks"]) == 10
    overall = cmp["overall"]
    assert (overall["pairs"], overall["a_only"], overall["b_only"]) == (30, 0, 0)
    assert overall["p_value"] == 1.0
    human = " ".join(_cli(settings, "compare", first["job_id"], other_pool).stdout.split())
    assert "exact McNemar p = 1" in human and "30 pairs" in human


# -- stable columns and the unpaired fallback, as the CLI prints them ---------------------------
def test_per_task_columns_and_an_unpaired_comparison_through_the_cli(
    settings: RedisSettings, r: redis.Redis, keys: Keys
) -> None:
    tasks = (DOOR, DRAWER)
    a = jobs.submit(r, keys, JobSpec(task="", tasks=tasks, pool="a", episodes=4, seed=0))
    b = jobs.submit(r, keys, JobSpec(task="", tasks=tasks, pool="b", episodes=4, seed=50))
    for job_id, wins in ((a, (True, True, False, False)), (b, (True, True, True, True))):
        eps = [_ep(k * 4 + i, t, i, w) for k, t in enumerate(tasks) for i, w in enumerate(wins)]
        results.record(r, keys, job_id, "w", 1.0, eps, {}, {})
    rows = _cli(settings, "results", a, "--tasks", "--format", "csv").stdout.splitlines()
    assert rows[0] == ",".join(TASK_COLUMNS)
    assert [row.split(",")[:4] for row in rows[1:]] == [[DOOR, "4", "2", "0.5"],
                                                         [DRAWER, "4", "2", "0.5"]]  # fmt: skip
    s = json.loads(_cli(settings, "status", a, "--json").stdout)
    assert [sorted(t) for t in s["tasks"]] == [sorted(TASK_COLUMNS)] * 2
    assert s["suite"] == {"score": 0.5, "low": pytest.approx(s["suite"]["low"]),
                          "high": pytest.approx(s["suite"]["high"]), "tasks": 2}  # fmt: skip
    episode_csv = _cli(settings, "results", a, "--format", "csv").stdout.splitlines()
    assert episode_csv[0].split(",")[8:10] == ["task", "task_episode"]
    assert episode_csv[5].split(",")[8:10] == [DRAWER, "0"]  # global index 4
    listed = json.loads(_cli(settings, "jobs", "--json").stdout)["jobs"]
    assert {j["task"] for j in listed} == {"2 tasks"}
    report = json.loads(_cli(settings, "compare", a, b, "--json").stdout)
    assert not report["paired"] and "different seeds (0 vs 50)" in report["why_unpaired"]
    assert report["overall"]["test"] == "two-proportion-z" and report["overall"]["n_a"] == 8
    assert report["overall"]["p_value"] == pytest.approx(
        scipy_stats.chi2_contingency([[4, 4], [8, 0]], correction=False).pvalue
    )
    human = " ".join(_cli(settings, "compare", a, b).stdout.split())
    assert "not paired: the jobs use different seeds (0 vs 50); two-proportion z-test" in human
