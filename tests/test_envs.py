"""Environment adapters against real simulators: Meta-World, gymnasium CartPole, a torch toy env.

The properties that matter to the fabric: partial resets touch only their slots; an episode is a
function of its seed (and the actions) whatever the slot ran before; success ends a Meta-World
episode; a finished slot stays finished until reset; observations match the declared spec.

Each test asks for the simulator it runs (the ``needs_*`` fixtures, the ``toy`` torch env), so
that without the [sim] or [policy] extra it is skipped, and the rest of the module still runs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from arena_eval.broker.errors import ArenaEvalError, ConfigError
from arena_eval.sim_worker.envs import (
    MissingSimDependency,
    ObsDict,
    StepResult,
    TensorEnvAdapter,
    UnknownTask,
    VectorEnv,
    make_env,
)
from arena_eval.sim_worker.envs.errors import require
from tests.gl_probe import gl_problem

pytestmark = pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")

DOOR = "metaworld/door-open-v3"
Act = Callable[[ObsDict], np.ndarray]


@dataclass
class Episode:
    """One slot's episode: observations from reset to the final step, and how it ended."""

    obs: list[ObsDict]
    success: bool
    terminated: bool
    truncated: bool

    @property
    def length(self) -> int:
        return len(self.obs) - 1

    def states(self, key: str = "state") -> np.ndarray:
        return np.stack([o[key] for o in self.obs])


@pytest.fixture
def needs_gym() -> None:
    pytest.importorskip("gymnasium")


@pytest.fixture
def needs_metaworld() -> None:
    pytest.importorskip("gymnasium")
    pytest.importorskip("metaworld")


@pytest.fixture
def toy() -> ModuleType:
    """``tests.batched_toy_env``: a torch env, so its tests need the [policy] extra."""
    pytest.importorskip("torch")
    from tests import batched_toy_env

    return batched_toy_env


def _row(obs: ObsDict, i: int) -> ObsDict:
    return {k: v[i].copy() for k, v in obs.items()}


def run_schedule(
    env: VectorEnv, schedule: Sequence[Sequence[int]], act: Act, max_len: int = 600
) -> dict[int, Episode]:
    """Run ``schedule[slot]`` (a list of episode seeds) on each slot, back to back.

    A slot starts its next seed the step after its episode ends, so slots run episodes out of
    phase with each other, as they do in a real worker. ``act(obs) -> (N, A)`` is the policy.
    """
    n = env.num_envs
    queues = [list(s) for s in schedule]
    assert len(queues) == n
    current: list[int | None] = [None] * n
    episodes: dict[int, Episode] = {}

    def start(slots: list[int], obs: ObsDict | None) -> ObsDict:
        ids = [s for s in slots if queues[s]]
        seeds = [queues[s].pop(0) for s in ids]
        for s in slots:
            current[s] = None
        if not ids:
            assert obs is not None
            return obs
        obs = env.reset(np.array(ids), np.array(seeds))
        for s, seed in zip(ids, seeds, strict=True):
            current[s] = seed
            episodes[seed] = Episode([_row(obs, s)], False, False, False)
        return obs

    obs = start(list(range(n)), None)
    for _ in range(max_len * max(len(s) for s in schedule)):
        if all(c is None for c in current):
            break
        result = env.step(act(obs))
        obs = result.obs
        ended = []
        for s in range(n):
            seed = current[s]
            if seed is None:
                continue
            ep = episodes[seed]
            ep.obs.append(_row(obs, s))
            if result.done[s]:
                ep.success = bool(result.success[s])
                ep.terminated = bool(result.terminated[s])
                ep.truncated = bool(result.truncated[s])
                ended.append(s)
        if ended:
            obs = start(ended, obs)
    assert all(c is None for c in current), "episodes did not finish"
    return episodes


def expert(task: str) -> Any:
    """Meta-World's scripted expert for ``task``: a policy, so it lives in the policy worker."""
    from arena_eval.policy_worker.builtins.metaworld_expert import expert_policy_class

    return expert_policy_class(task)()


def metaworld_expert(task: str = "door-open-v3") -> Act:
    policy = expert(task)

    def act(obs: ObsDict) -> np.ndarray:
        return np.stack([policy.get_action(row) for row in obs["state"]])

    return act


def assert_same(a: Episode, b: Episode) -> None:
    assert a.length == b.length
    assert (a.success, a.terminated, a.truncated) == (b.success, b.terminated, b.truncated)
    for key in a.obs[0]:
        np.testing.assert_array_equal(a.states(key), b.states(key))


def assert_matches_spec(env: VectorEnv, obs: ObsDict) -> None:
    spec = env.observation_spec()
    assert set(obs) == set(spec)
    for key, field in spec.items():
        assert obs[key].dtype == np.dtype(field.dtype), key
        assert obs[key].shape == (env.num_envs, *field.shape), key


@pytest.fixture(scope="module")
def fresh_door_episodes() -> dict[int, Episode]:
    """Seeds 5, 6, 7 each on a brand-new single-slot env: the reference outcomes."""
    pytest.importorskip("gymnasium")
    pytest.importorskip("metaworld")
    out: dict[int, Episode] = {}
    for seed in (5, 6, 7):
        with make_env(DOOR, 1, seed=100 + seed) as env:
            out.update(run_schedule(env, [[seed]], metaworld_expert()))
    return out


# --------------------------------------------------------------------------- Meta-World


@pytest.mark.usefixtures("needs_metaworld")
def test_metaworld_same_slot_reproduces_fresh_envs(fresh_door_episodes: dict[int, Episode]) -> None:
    with make_env(DOOR, 1, seed=42) as env:
        reused = run_schedule(env, [[5, 6, 7]], metaworld_expert())
    for seed in (5, 6, 7):
        assert_same(reused[seed], fresh_door_episodes[seed])
    lengths = {fresh_door_episodes[s].length for s in (5, 6, 7)}
    assert len(lengths) > 1, "seeds should give different episodes"


@pytest.mark.usefixtures("needs_metaworld")
@pytest.mark.parametrize("schedule", [[[7], [5], [6]], [[6, 5], [7], []], [[5, 7, 6], [], []]])
def test_metaworld_any_slot_any_order(
    fresh_door_episodes: dict[int, Episode], schedule: list[list[int]]
) -> None:
    with make_env(DOOR, 3, seed=9) as env:
        got = run_schedule(env, schedule, metaworld_expert())
    for seed in (5, 6, 7):
        assert_same(got[seed], fresh_door_episodes[seed])


@pytest.mark.usefixtures("needs_metaworld")
@pytest.mark.parametrize("task", ["pick-place-v3", "assembly-v3", "drawer-open-v3"])
def test_metaworld_slot_reuse_other_tasks(task: str) -> None:
    """Tasks with other reset code (free objects, pegs, drawers), under seeded random actions."""

    def rollout(env: VectorEnv, seed: int) -> Episode:
        rng = np.random.default_rng(seed)
        return run_schedule(env, [[seed]], lambda obs: rng.uniform(-1, 1, size=(1, 4)))[seed]

    with make_env(f"metaworld/{task}", 1, max_steps=25) as env:
        fresh = rollout(env, 8)
    with make_env(f"metaworld/{task}", 1, max_steps=25) as env:
        rollout(env, 3)
        reused = rollout(env, 8)
    assert_same(fresh, reused)


@pytest.mark.usefixtures("needs_metaworld")
def test_metaworld_reset_seed_fixes_goal_and_objects() -> None:
    with make_env(DOOR, 2) as env:
        a = env.reset([0, 1], [3, 3])["state"]
        np.testing.assert_array_equal(a[0], a[1])
        b = env.reset([1], [4])["state"]
        np.testing.assert_array_equal(b[0], a[0])  # slot 0 untouched
        assert not np.array_equal(b[1][-3:], a[1][-3:])  # another goal
        assert not np.array_equal(b[1][4:7], a[1][4:7])  # another door position


@pytest.mark.usefixtures("needs_metaworld")
def test_metaworld_expert_succeeds_and_terminates() -> None:
    with make_env(DOOR, 5) as env:
        assert env.action_dim() == 4
        episodes = run_schedule(env, [[s] for s in range(5)], metaworld_expert())
    for seed, ep in episodes.items():
        assert ep.success and ep.terminated and not ep.truncated, seed
        assert ep.length < 500
        assert ep.obs[0]["state"].shape == (39,)


@pytest.mark.usefixtures("needs_metaworld")
def test_metaworld_done_slot_stays_done_until_reset() -> None:
    with make_env(DOOR, 2) as env:
        act = metaworld_expert()
        obs = env.reset([0, 1], [0, 1])
        result: StepResult | None = None
        for _ in range(500):
            result = env.step(act(obs))
            obs = result.obs
            if result.done[0]:
                break
        assert result is not None and result.terminated[0] and result.success[0]
        final = obs["state"][0].copy()
        for _ in range(3):  # stepping a finished slot is allowed and changes nothing
            later = env.step(act(obs))
            np.testing.assert_array_equal(later.obs["state"][0], final)
            assert later.terminated[0] and later.success[0] and later.reward[0] == 0.0
        assert set(later.metrics) >= {"near_object", "grasp_success", "obj_to_target"}
        assert all(m.dtype == np.float64 and m.shape == (2,) for m in later.metrics.values())
        obs = env.reset([0], [0])
        again = env.step(act(obs))
        assert not again.done[0]


@pytest.mark.usefixtures("needs_metaworld")
def test_metaworld_truncates_at_max_steps_and_beyond_horizon() -> None:
    with make_env(DOOR, 2, max_steps=20) as env:
        assert_matches_spec(env, env.reset([0, 1], [1, 2]))
        for i in range(20):
            result = env.step(np.zeros((2, 4)))
            assert result.truncated.all() == (i == 19)
        assert not result.terminated.any() and not result.success.any()
    with make_env(DOOR, 1, max_steps=510) as env:  # past Meta-World's own 500-step horizon
        for _ in range(510):
            result = env.step(np.zeros((1, 4)))
        assert result.truncated[0]


@pytest.mark.usefixtures("needs_metaworld")
def test_metaworld_async_matches_sync(fresh_door_episodes: dict[int, Episode]) -> None:
    with make_env(DOOR, 2, vectorization="async") as env:
        got = run_schedule(env, [[6], [5, 7]], metaworld_expert())
    for seed in (5, 6, 7):
        assert_same(got[seed], fresh_door_episodes[seed])


@pytest.mark.usefixtures("needs_metaworld")
def test_metaworld_camera() -> None:
    problem = gl_problem()
    if problem is not None:
        pytest.skip(problem)  # CI installs libosmesa6; a bare machine has no GL library
    with make_env(DOOR, 2, camera="corner", image_size=224) as env:
        spec = env.observation_spec()
        assert spec["corner_rgb"].dtype == "uint8" and spec["corner_rgb"].shape == (224, 224, 3)
        assert spec["state"].dtype == "float64" and spec["state"].shape == (39,)
        obs = env.reset([0, 1], [0, 1])
        assert_matches_spec(env, obs)
        result = env.step(np.zeros((2, 4)))
        assert_matches_spec(env, result.obs)
        image = result.obs["corner_rgb"]
        assert image.std() > 10.0, "rendered frame is blank"
        assert not np.array_equal(image[0], image[1]), "different seeds, different scenes"
    with pytest.raises(ConfigError, match=r"no camera 'nope'.*corner"):
        make_env(DOOR, 1, camera="nope")


@pytest.mark.usefixtures("needs_metaworld")
def test_expert_policy_lookup() -> None:
    policy = expert("metaworld/door-open-v3")
    assert type(policy).__name__ == "SawyerDoorOpenV3Policy"
    assert type(expert("peg-insert-side-v3")).__name__.startswith("SawyerPeg")
    action = policy.get_action(np.zeros(39))
    assert np.asarray(action).shape == (4,)
    with pytest.raises(ConfigError, match="no-such-task"):
        expert("no-such-task-v3")


# --------------------------------------------------------------------------- gymnasium


def cartpole_policy(obs: ObsDict) -> np.ndarray:
    # push toward the side the pole leans to: keeps it up for a while, deterministic
    return (obs["state"][:, 2:3] > 0).astype(np.float64)


@pytest.fixture(params=["sync", "async"])
def vectorization(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.usefixtures("needs_gym")
def test_cartpole_partial_reset_and_latch(vectorization: str) -> None:
    with make_env("CartPole-v1", 3, vectorization=vectorization) as env:
        assert env.action_dim() == 1
        assert env.observation_spec()["state"].shape == (4,)
        obs = env.reset([0, 1, 2], [10, 11, 12])
        assert_matches_spec(env, obs)
        before = obs["state"].copy()
        after = env.reset([1], [99])["state"]
        np.testing.assert_array_equal(after[[0, 2]], before[[0, 2]])
        assert not np.array_equal(after[1], before[1])

        pushes = np.ones((3, 1))  # always push right: the pole falls within ~10-30 steps
        done_at = np.full(3, -1)
        for t in range(200):
            result = env.step(pushes)
            done_at[(done_at < 0) & result.done] = t
            if (done_at >= 0).all():
                break
        assert (done_at >= 0).all() and result.terminated.all() and not result.success.any()
        frozen = result.obs["state"].copy()
        result = env.step(pushes)  # finished slots: no assertion, no warning, frozen rows
        np.testing.assert_array_equal(result.obs["state"], frozen)
        assert result.terminated.all() and (result.reward == 0).all()
        obs = env.reset([2], [12])
        np.testing.assert_array_equal(obs["state"][2], before[2])  # same seed, same start
        result = env.step(pushes)
        assert result.done.tolist() == [True, True, False] and result.reward[2] == 1.0


@pytest.mark.usefixtures("needs_gym")
def test_cartpole_determinism_across_slots_and_vectorization(vectorization: str) -> None:
    fresh = {}
    for seed in (3, 4, 5):
        with make_env("gym/CartPole-v1", 1) as env:
            fresh[seed] = run_schedule(env, [[seed]], cartpole_policy)[seed]
    with make_env("CartPole-v1", 2, vectorization=vectorization, seed=50) as env:
        got = run_schedule(env, [[5, 3], [4]], cartpole_policy)
    for seed in (3, 4, 5):
        assert_same(got[seed], fresh[seed])


@pytest.mark.usefixtures("needs_gym")
def test_cartpole_time_limits() -> None:
    with make_env("CartPole-v1", 2, max_steps=7) as env:
        for i in range(7):
            result = env.step(np.zeros((2, 1)) + np.array([[0.0], [1.0]]) * (i % 2))
        assert result.truncated.all() and not result.terminated.any()

    def balance(obs: ObsDict) -> np.ndarray:  # a PD controller that never drops the pole
        s = obs["state"]
        return ((s[:, 2] * 10 + s[:, 3] + 0.1 * s[:, 1]) > 0).astype(np.float64)[:, None]

    with make_env("CartPole-v1", 1) as env:  # no max_steps: the env's own TimeLimit (500)
        episode = run_schedule(env, [[0]], balance, max_len=600)[0]
    assert episode.truncated and not episode.terminated and episode.length == 500


# --------------------------------------------------------------------------- batched tensor env


def test_tensor_adapter_conversion_and_spec(toy: ModuleType) -> None:
    env = TensorEnvAdapter(toy.PointMassReach(4), seed=0)
    spec = env.observation_spec()
    assert set(spec) == {"policy/pos", "policy/to_goal", "privileged", "step"}
    assert spec["policy/pos"].dtype == "float32" and spec["policy/pos"].shape == (2,)
    assert spec["step"].dtype == "int64" and spec["step"].shape == ()
    assert env.action_dim() == 2
    obs = env.reset([0, 1, 2, 3], [0, 1, 2, 3])
    assert_matches_spec(env, obs)
    assert all(type(v) is np.ndarray for v in obs.values())
    result = env.step(np.zeros((4, 2)))
    assert_matches_spec(env, result.obs)
    assert result.reward.dtype == np.float64 and result.reward.shape == (4,)
    assert result.terminated.dtype == np.bool_ and result.success.dtype == np.bool_
    assert set(result.metrics) == {"dist"}  # "log" (scalars) is not per-env
    np.testing.assert_allclose(result.metrics["dist"], -result.reward)
    env.close()
    assert env._env.closed  # type: ignore[attr-defined]


def test_tensor_adapter_partial_reset_latch_and_determinism(toy: ModuleType) -> None:
    inner = toy.PointMassReach(3)
    env = TensorEnvAdapter(inner, seed=0)
    obs = env.reset([0, 1, 2], [1, 2, 3])
    before = {k: v.copy() for k, v in obs.items()}
    obs = env.reset([2], [7])
    for key in obs:
        np.testing.assert_array_equal(obs[key][:2], before[key][:2])
    fresh = {}
    for seed in (1, 2, 3, 7):
        single = TensorEnvAdapter(toy.PointMassReach(1), seed=seed)
        fresh[seed] = run_schedule(single, [[seed]], toy.expert)[seed]
        assert fresh[seed].success and fresh[seed].terminated
    got = run_schedule(env, [[3, 1], [7], [2]], toy.expert)
    assert inner.autoresets >= 4  # the env autoreset finished slots; the adapter hid it
    for seed in (1, 2, 3, 7):
        assert_same(got[seed], fresh[seed])


def test_tensor_adapter_frozen_rows_and_max_steps(toy: ModuleType) -> None:
    env = TensorEnvAdapter(toy.PointMassReach(2), max_steps=5)
    env.reset([0, 1], [0, 1])
    still = np.zeros((2, 2))
    for _ in range(5):
        result = env.step(still)
    assert result.truncated.all() and not result.terminated.any()
    frozen = result.obs["policy/pos"].copy()
    result = env.step(np.ones((2, 2)))
    np.testing.assert_array_equal(result.obs["policy/pos"], frozen)
    assert result.truncated.all() and (result.reward == 0).all()
    result = env.step(still)
    env.reset([1], [1])
    assert not env.step(still).truncated[1]


def test_tensor_adapter_hides_autoreset_without_final_obs(toy: ModuleType) -> None:
    inner = toy.PointMassReach(2, episode_length=4, final_obs=False)
    env = TensorEnvAdapter(inner)
    env.reset([0, 1], [0, 1])
    for _ in range(4):
        result = env.step(np.zeros((2, 2)))
    assert result.truncated.all() and inner.autoresets == 2
    assert (result.obs["step"] == 0).all()  # the env's post-reset rows (documented)
    for _ in range(3):  # the env runs its new episodes; the adapter keeps the rows frozen
        later = env.step(np.ones((2, 2)))
        for key in later.obs:
            np.testing.assert_array_equal(later.obs[key], result.obs[key])
        assert later.truncated.all() and (later.reward == 0).all()


def test_py_factory_task(toy: ModuleType) -> None:
    env = make_env("py:tests.batched_toy_env:make", 3, seed=5, max_steps=50)
    assert isinstance(env, TensorEnvAdapter) and env.num_envs == 3
    episodes = run_schedule(env, [[0], [1], [2]], toy.expert)
    assert all(ep.success for ep in episodes.values())
    env.close()


# --------------------------------------------------------------------------- factory errors


@pytest.mark.usefixtures("needs_metaworld", "toy")
def test_factory_errors() -> None:
    with pytest.raises(UnknownTask, match=r"metaworld/<task>.*gym/<EnvId>.*py:"):
        make_env("not-a-task", 1)
    assert issubclass(UnknownTask, ConfigError) and issubclass(UnknownTask, ArenaEvalError)
    with pytest.raises(UnknownTask, match="no task 'door-shut-v3'"):
        make_env("metaworld/door-shut-v3", 1)
    with pytest.raises(UnknownTask, match="NoSuchEnv"):
        make_env("gym/NoSuchEnv-v0", 1)
    with pytest.raises(UnknownTask, match="cannot import module"):
        make_env("py:no_such_module_xyz:make", 1)
    with pytest.raises(UnknownTask, match="no callable 'nope'"):
        make_env("py:tests.batched_toy_env:nope", 1)
    with pytest.raises(UnknownTask, match=re.escape("expected 'py:<module.path>:<factory>'")):
        make_env("py:justamodule", 1)
    with pytest.raises(ConfigError, match="camera"):
        make_env("CartPole-v1", 1, camera="corner")
    with pytest.raises(ConfigError, match="vectorization"):
        make_env("CartPole-v1", 1, vectorization="threads")
    with pytest.raises(ConfigError, match="num_envs"):
        make_env("CartPole-v1", 0)


@pytest.mark.usefixtures("needs_gym")
def test_bad_reset_and_step_arguments() -> None:
    with make_env("CartPole-v1", 2) as env:
        with pytest.raises(ValueError, match="duplicates"):
            env.reset([0, 0], [1, 2])
        with pytest.raises(ValueError, match=r"\[0, 2\)"):
            env.reset([2], [1])
        with pytest.raises(ValueError, match="seeds"):
            env.reset([0, 1], [1])
        with pytest.raises(ValueError, match="non-negative"):
            env.reset([0], [-1])
        with pytest.raises(ValueError, match=r"shape \(2, 1\)"):
            env.step(np.zeros((2, 3)))
        np.testing.assert_array_equal(env.reset([], [])["state"], env.reset([], [])["state"])


@pytest.fixture
def without_simulators(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("metaworld", "gymnasium"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import <name>` fail
    yield


@pytest.mark.usefixtures("without_simulators")
def test_missing_simulator_says_what_to_install() -> None:
    hint = r"pip install 'arena-eval\[sim\]'"
    with pytest.raises(MissingSimDependency, match=hint):
        make_env(DOOR, 1)
    with pytest.raises(MissingSimDependency, match=hint):
        make_env("gym/CartPole-v1", 1)
    with pytest.raises(UnknownTask, match=hint):  # a bare id cannot even be recognised
        make_env("CartPole-v1", 1)
    with pytest.raises(MissingSimDependency, match="not_installed_pkg"):
        require("not_installed_pkg", purpose="a test")
