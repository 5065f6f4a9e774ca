"""A simulator from another package, registered through the ``arena_eval.envs`` entry points.

The plugin below lives in a temporary folder with its own ``.dist-info`` (what ``pip install``
of a third-party package leaves on ``sys.path``), so nothing in arena-eval names it: the task
table must find it by its entry point, and a job's task string must reach it, through the
rollout and a real policy pool, exactly as a built-in simulator's does.
"""

from __future__ import annotations

import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.builtins.simple import ZeroPolicy
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.client import PolicyClient
from arena_eval.sim_worker.envs import ENTRY_POINT_GROUP, UnknownTask, make_env
from arena_eval.sim_worker.rollout import RolloutStats, run_episodes

PLUGIN = "arena_toy_sim_plugin"

#: A line walker: the state is (position, goal); each step moves by 1 + action; the episode
#: ends, as a success, at the goal. Episode i starts at seed % 5, so its length is 10 - seed % 5.
PLUGIN_SOURCE = """
import numpy as np

from arena_eval.broker.spec import FieldSpec
from arena_eval.sim_worker.envs import EnvAdapter, StepResult, VectorEnv

GOAL = 10.0


class LineWalk(VectorEnv):
    def __init__(self, num_envs, seed):
        self.num_envs = num_envs
        self.pos = np.zeros(num_envs)
        self.reset(np.arange(num_envs), seed + np.arange(num_envs))

    def observation_spec(self):
        return {"state": FieldSpec("float64", (2,))}

    def action_dim(self):
        return 1

    def _obs(self):
        return {"state": np.stack([self.pos, np.full(self.num_envs, GOAL)], axis=1)}

    def reset(self, env_ids, seeds):
        ids = np.asarray(env_ids, np.int64)
        self.pos[ids] = np.asarray(seeds, np.int64) % 5
        return self._obs()

    def step(self, actions):
        done_before = self.pos >= GOAL
        self.pos = np.where(done_before, self.pos, self.pos + 1.0 + np.asarray(actions)[:, 0])
        done = self.pos >= GOAL
        n = self.num_envs
        return StepResult(
            obs=self._obs(), reward=np.where(done_before, 0.0, 1.0), terminated=done,
            truncated=np.zeros(n, bool), success=done,
            metrics={"pos": self.pos.astype(np.float64)},
        )

    def close(self):
        pass


def make(name, num_envs, options):
    if name != "line":
        raise ValueError(f"toy has only 'line', not {name!r}")
    return LineWalk(num_envs, options.seed)


ADAPTER = EnvAdapter(prefix="toy:", make=make, syntax="'toy:line' (a test plugin)")
NOT_AN_ADAPTER = 42
"""


def install_plugin(site: Path, entry_points: dict[str, str], dist: str = "arena-toy-sim") -> None:
    """Write the plugin module and a dist-info declaring ``entry_points`` into ``site``."""
    site.mkdir(exist_ok=True)
    (site / f"{PLUGIN}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh folder on sys.path, as site-packages is for an installed package."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield path
    sys.modules.pop(PLUGIN, None)


def test_a_task_of_an_entry_point_adapter_runs_through_a_pool(
    site: Path, settings: RedisSettings, r: redis.Redis
) -> None:
    install_plugin(site, {"toy": f"{PLUGIN}:ADAPTER"})
    worker = PolicyWorker("toy-pool", ZeroPolicy(action_shape="3x1"), settings, max_wait_ms=0.5)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    episodes: list[EpisodeResult] = []
    flushes: list[RolloutStats] = []

    def sink(batch: list[EpisodeResult], stats: RolloutStats) -> None:
        episodes.extend(batch)
        flushes.append(stats)

    try:
        with (
            PolicyClient("toy-pool", settings, timeout_s=10) as client,
            make_env("toy:line", 2, seed=0) as env,
        ):
            finished = run_episodes(
                env, ChunkedPolicy(client, 2), job_id="j", indices=list(range(6)),
                seed_of=lambda i: 100 + i, on_episodes=sink, worker="w",
            )  # fmt: skip
    finally:
        worker.stop()
        thread.join(10)
    assert finished == 6
    by_index = {e.index: e for e in episodes}
    assert sorted(by_index) == list(range(6))
    for i, e in by_index.items():
        assert e.length == 10 - (100 + i) % 5  # the plugin's own dynamics ran
        assert e.success is True
    assert sum(f.requests for f in flushes) > 0  # actions came from the pool


def test_unknown_task_lists_the_plugin_syntax_and_a_broken_entry_point(site: Path) -> None:
    install_plugin(site, {"toy": f"{PLUGIN}:ADAPTER", "junk": f"{PLUGIN}:NOT_AN_ADAPTER"})
    with pytest.raises(UnknownTask, match=r"metaworld/<task>.*py:.*'toy:line' \(a test plugin\)"):
        make_env("nope:x", 1)
    with pytest.raises(UnknownTask, match=r"junk .*NOT_AN_ADAPTER.*not an EnvAdapter"):
        make_env("nope:x", 1)
    with make_env("toy:line", 1) as env:  # the broken entry point costs nothing else
        assert env.action_dim() == 1


def test_two_adapters_with_one_prefix_are_refused_by_name(site: Path) -> None:
    install_plugin(site, {"toy": f"{PLUGIN}:ADAPTER"})
    install_plugin(site / "..", {"toy-again": f"{PLUGIN}:ADAPTER"}, dist="other-sim")
    sys.path.insert(0, str(site / ".."))
    try:
        with pytest.raises(ConfigError, match=r"'toy:' is registered by more than one"):
            make_env("toy:line", 1)
    finally:
        sys.path.remove(str(site / ".."))
