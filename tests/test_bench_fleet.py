"""``arena-eval bench fleet``: every configuration runs end to end and the table adds up.

Real Redis (the suite's), real Meta-World, real child processes: the seed-style server and
sims, ``policy serve`` and ``sim serve``. A tiny workload (K = 1, 2 episodes of 5 steps, a
1 ms model) checks the structure of what is printed and that each configuration ran every
episode to its full length, never how fast. The failure tests check that a child that dies
and a job that fails end the run with the reason, instead of hanging it.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from arena_eval.benchmarks.fleet import batching_ceiling, format_table
from arena_eval.benchmarks.fleet_arena import run_arena
from arena_eval.benchmarks.fleet_seed import run_seed
from arena_eval.benchmarks.fleet_setup import FleetSetup
from arena_eval.broker.errors import ArenaEvalError, ConfigError
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app

pytest.importorskip("metaworld")
pytest.importorskip("zmq")

TINY = ["--k", "1", "--episodes", "2", "--num-envs", "2", "--max-steps", "5", "--a-ms", "1",
        "--b-ms", "0"]  # fmt: skip
FIGURES = {"config", "k", "episodes", "wall_s", "episodes_per_h", "sim_cores", "per_sim_core",
           "busy_fraction", "mean_batch_rows", "mean_episode_length", "sim_busy",
           "round_trip_ms"}  # fmt: skip
NO_SUCH_TASK = "metaworld/no-such-task-v3"


def _env(settings: RedisSettings) -> dict[str, str]:
    return {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}


@pytest.mark.timeout(300)
def test_bench_fleet_runs_every_configuration(settings: RedisSettings) -> None:
    res = CliRunner().invoke(app, ["bench", "fleet", *TINY, "--json"], env=_env(settings))
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    result = json.loads(res.stdout)
    assert result["setup"]["ks"] == [1] and result["setup"]["max_steps"] == 5
    runs = result["runs"]
    assert [(r["config"], r["k"]) for r in runs] == [("a", 1), ("b", 1), ("c", 1),
                                                     ("c+overlap", 1)]  # fmt: skip
    for run in runs:
        assert set(run) == FIGURES, run
        # every episode ran, to its full length (a zero action never reaches the goal)
        assert run["episodes"] == 2 and run["mean_episode_length"] == 5.0, run
        assert run["episodes_per_h"] > 0 and 0 < run["busy_fraction"] <= 1, run
        assert run["sim_cores"] == 1 and run["per_sim_core"] == run["episodes_per_h"], run
        # every forward pass had rows: 2 slots, or one lane of 1 with overlap
        assert 1.0 <= run["mean_batch_rows"] <= 2.0, run
    (ratios,) = result["ratios"]
    assert set(ratios) == {"k", "overlap_per_core_vs_a", "sync_per_core_vs_a", "sync_vs_b",
                           "overlap_vs_b", "ceiling_vs_b"}  # fmt: skip
    assert ratios["ceiling_vs_b"] == 1.0  # one sim: nothing to batch with
    table = format_table(result).splitlines()
    assert table[1].split()[:3] == ["configuration", "K", "episodes/h"]
    assert [line.split(")")[0] for line in table[2:6]] == ["(a", "(b", "(c", "(c"]
    assert "(c)+overlap per sim core / (a)" in table[7] and "per sim core =" in table[8]


def test_the_batching_ceiling() -> None:
    """K (a + b N) / (a + b K N): 4 x 20.4 / 21.6 for the default workload (2 slots per sim)."""
    assert batching_ceiling(FleetSetup(), 4) == pytest.approx(4 * 20.4 / 21.6)
    assert batching_ceiling(FleetSetup(num_envs=16), 4) == pytest.approx(4 * 23.2 / 32.8)
    assert batching_ceiling(FleetSetup(a_ms=20, b_ms=0), 4) == pytest.approx(4.0)


def test_the_workload_is_checked() -> None:
    with pytest.raises(ConfigError, match="fewer than K"):
        FleetSetup(episodes=2, ks=(1, 4))
    with pytest.raises(ConfigError, match="num-envs"):
        FleetSetup(num_envs=1)


def test_bad_k_is_a_usage_error() -> None:
    res = CliRunner().invoke(app, ["bench", "fleet", "--k", "1,x"])
    assert res.exit_code == 2 and "--k" in res.output


@pytest.mark.timeout(120)
def test_a_seed_sim_that_dies_ends_the_run_with_its_error() -> None:
    setup = FleetSetup(episodes=1, ks=(1,), task=NO_SUCH_TASK, num_envs=2, max_steps=2)
    with pytest.raises(ArenaEvalError, match="did not start") as err:
        run_seed(setup, 1)
    assert "no-such-task-v3" in str(err.value)  # the sim's own error, from its stderr


@pytest.mark.timeout(120)
def test_a_failed_job_ends_the_run_with_its_reason(settings: RedisSettings) -> None:
    setup = FleetSetup(episodes=1, ks=(1,), task=NO_SUCH_TASK, num_envs=2, max_steps=2)
    with pytest.raises(ArenaEvalError, match="failed") as err:
        run_arena(setup, 1, overlap=False, settings=settings)
    assert "no-such-task-v3" in str(err.value)
