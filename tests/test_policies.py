"""The Policy registry and the model-free / Meta-World built-ins, with real imports throughout.

Entry points are exercised through the real ``importlib.metadata`` machinery:
a throw-away ``*.dist-info`` with an ``entry_points.txt`` is put on
``sys.path``, exactly what an installed third-party package looks like.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.spec import FieldSpec, PolicySpec, SpecMismatch
from arena_eval.policy_worker.builtins.simple import RandomPolicy, ZeroPolicy
from arena_eval.policy_worker.policy import Batch, Policy, batch_rows, check_actions
from arena_eval.policy_worker.registry import (
    BUILTIN_POLICIES,
    ENTRY_POINT_GROUP,
    UnknownPolicy,
    available_policies,
    load_policy,
    parse_policy_args,
)

REPO = Path(__file__).resolve().parents[1]


def _readonly(arr: np.ndarray) -> np.ndarray:
    """A read-only view of a bytes buffer, like an array decoded zero-copy from the wire."""
    out = np.frombuffer(arr.tobytes(), dtype=arr.dtype).reshape(arr.shape)
    assert not out.flags.writeable
    return out


# -- argument parsing ------------------------------------------------------------------
def test_parse_policy_args() -> None:
    assert parse_policy_args([]) == {}
    assert parse_policy_args(["action_shape=16x36", "obs=a:uint8:2x2", "expr=a=b", "e="]) == {
        "action_shape": "16x36",
        "obs": "a:uint8:2x2",
        "expr": "a=b",
        "e": "",
    }


@pytest.mark.parametrize(
    ("item", "needle"),
    [("action_shape", "key=value"), ("=16x36", "key=value"), ("bad-key=1", "identifier")],
)
def test_parse_policy_args_malformed(item: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        parse_policy_args([item])
    assert repr(item) in str(info.value)


def test_parse_policy_args_duplicate() -> None:
    with pytest.raises(ConfigError, match="'seed' given twice"):
        parse_policy_args(["seed=1", "seed=2"])


# -- registry ------------------------------------------------------------------------
def test_builtins_registered_in_pyproject_match_fallback_map() -> None:
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    table = data["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert table == dict(BUILTIN_POLICIES)


def test_available_lists_builtins() -> None:
    available = available_policies()
    for name, target in BUILTIN_POLICIES.items():
        assert available[name].startswith(target)


def test_load_by_builtin_name() -> None:
    policy = load_policy("zero")
    assert isinstance(policy, ZeroPolicy)
    assert policy.spec().action_shape == (16, 36)
    assert isinstance(load_policy("random", {"seed": "1"}), RandomPolicy)


def test_unknown_name_lists_names_and_syntaxes() -> None:
    with pytest.raises(UnknownPolicy) as info:
        load_policy("zer0")
    text = str(info.value)
    assert "'zer0'" in text
    assert "Did you mean 'zero'" in text
    for name in BUILTIN_POLICIES:
        assert name in text
    assert "package.module:ClassName" in text
    assert ENTRY_POINT_GROUP in text
    assert isinstance(info.value, ConfigError)


def test_unknown_and_missing_args() -> None:
    with pytest.raises(ConfigError) as info:
        load_policy("zero", {"actionshape": "2x3"})
    assert "'actionshape'" in str(info.value)
    assert "action_shape='16x36'" in str(info.value)  # lists the accepted arguments
    # (metaworld-expert's task became optional: it serves every task when none is given)
    with pytest.raises(ConfigError, match=r"missing required argument.*'path'"):
        load_policy("torch")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"action_shape": "16"}, "action_shape.*'HxA'"),
        ({"action_shape": "0x3"}, "action_shape"),
        ({"action_shape": "axb"}, "action_shape.*16x36"),
        ({"action_dtype": "floaty"}, "action_dtype.*float32"),
        ({"action_dtype": "str"}, "action_dtype.*not a real numeric"),
        ({"obs": "rgb:uint8"}, r"obs: malformed item 'rgb:uint8'.*key:dtype:shape"),
        ({"obs": "rgb:uint9:2x2"}, r"obs \(rgb\): unknown dtype"),
        ({"obs": "rgb:uint8:2xx2"}, r"obs \(rgb\): bad shape"),
        ({"obs": "a:uint8:2,a:uint8:3"}, "appears twice"),
    ],
)
def test_zero_bad_args(args: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_policy("zero", args)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"seed": "x"}, "seed: expected an integer"),
        ({"seed": "-1"}, "seed: must be >= 0"),
        ({"low": "nan"}, "low: expected a finite number"),
        ({"low": "2", "high": "1"}, r"low \(2.0\) must be <= high"),
    ],
)
def test_random_bad_args(args: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_policy("random", args)


def _write_module(root: Path, name: str, body: str) -> None:
    (root / f"{name}.py").write_text(textwrap.dedent(body))


PLUGIN = """
    import numpy as np
    from arena_eval.broker.spec import PolicySpec
    from arena_eval.policy_worker.policy import Policy

    class Echo(Policy):
        '''Returns the 'x' observation (B, 2) as a (B, 1, 2) chunk, times ``scale``.'''

        def __init__(self, scale: str = "1", **extra: str) -> None:
            self.scale = float(scale)
            self.extra = extra
            self.resets: list[list[str]] = []

        def spec(self) -> PolicySpec:
            return PolicySpec(name="echo", action_shape=(1, 2))

        def infer(self, batch):
            return (batch.obs["x"][:, None, :] * self.scale).astype(np.float32)

        def reset(self, episode_ids):
            self.resets.append(list(episode_ids))

    def make_echo(scale: str = "1") -> Policy:
        return Echo(scale=scale)

    class NotAPolicy:
        pass

    def make_not_a_policy() -> object:
        return 42
"""


def test_load_by_module_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, "ae_plugin_mod", PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = load_policy("ae_plugin_mod:Echo", {"scale": "2", "anything": "goes"})
    assert policy.spec().name == "echo"
    out = policy.infer(Batch.of({"x": _readonly(np.array([[1.0, 2.0]], dtype=np.float32))}))
    np.testing.assert_array_equal(out, [[[2.0, 4.0]]])
    assert policy.extra == {"anything": "goes"}  # type: ignore[attr-defined]
    policy.reset(["ep-1"])
    assert policy.resets == [["ep-1"]]  # type: ignore[attr-defined]
    assert load_policy("ae_plugin_mod:make_echo").spec().name == "echo"  # factory function


def test_module_path_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, "ae_plugin_mod2", PLUGIN)
    _write_module(tmp_path, "ae_broken_dep", "import ae_no_such_dependency\n")
    _write_module(tmp_path, "ae_raises", "raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ConfigError, match=r"no module named 'ae_no_such_pkg'.*installed"):
        load_policy("ae_no_such_pkg.sub:Thing")
    with pytest.raises(ConfigError, match="needs 'ae_no_such_dependency', which is not installed"):
        load_policy("ae_broken_dep:Thing")
    with pytest.raises(ConfigError, match="raised RuntimeError: boom at import"):
        load_policy("ae_raises:Thing")
    with pytest.raises(ConfigError, match="'ae_plugin_mod2' has no attribute 'Nope'"):
        load_policy("ae_plugin_mod2:Nope")
    with pytest.raises(ConfigError, match="does not subclass"):
        load_policy("ae_plugin_mod2:NotAPolicy")
    with pytest.raises(ConfigError, match="returned a int"):
        load_policy("ae_plugin_mod2:make_not_a_policy")
    with pytest.raises(ConfigError, match="malformed import path"):
        load_policy("ae_plugin_mod2:")
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) 'bogus'"):
        load_policy("ae_plugin_mod2:make_echo", {"bogus": "1"})


def _fake_distribution(root: Path, dist: str, entries: dict[str, str]) -> None:
    info = root / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")


def test_load_by_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, "ae_ep_plugin", PLUGIN)
    _fake_distribution(
        tmp_path,
        "ae-ep-plugin",
        {"echo-ep": "ae_ep_plugin:Echo", "broken-ep": "ae_ep_plugin:Missing"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    available = available_policies()
    assert available["echo-ep"] == "ae_ep_plugin:Echo [entry point, ae-ep-plugin 0.3]"
    policy = load_policy("echo-ep", {"scale": "3"})
    out = policy.infer(Batch.of({"x": np.ones((2, 2), dtype=np.float32)}))
    np.testing.assert_array_equal(out, np.full((2, 1, 2), 3.0, dtype=np.float32))
    with pytest.raises(ConfigError, match=r"registered by ae-ep-plugin 0.3.*loading it failed"):
        load_policy("broken-ep")
    with pytest.raises(UnknownPolicy) as info:
        load_policy("echo-epp")
    assert "echo-ep" in str(info.value)


def test_entry_point_name_clash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(tmp_path, "ae_clash_plugin", PLUGIN)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _fake_distribution(tmp_path / "a", "ae-clash-a", {"clash": "ae_clash_plugin:Echo"})
    _fake_distribution(tmp_path / "b", "ae-clash-b", {"clash": "ae_clash_plugin:make_echo"})
    _fake_distribution(tmp_path, "ae-shadow", {"zero": "ae_clash_plugin:Echo"})
    for path in (tmp_path, tmp_path / "a", tmp_path / "b"):
        monkeypatch.syspath_prepend(str(path))
    with pytest.raises(ConfigError, match="registered by more than one package"):
        load_policy("clash")
    # A third-party package cannot shadow a built-in name.
    assert isinstance(load_policy("zero"), ZeroPolicy)
    assert "ambiguous" in available_policies()["zero"]


def test_registry_imports_neither_torch_nor_metaworld() -> None:
    code = (
        "import sys, numpy as np\n"
        "from arena_eval.policy_worker.registry import load_policy, available_policies\n"
        "import arena_eval.policy_worker.builtins\n"
        "available_policies()\n"
        "p = load_policy('random', {'action_shape': '2x3'})\n"
        "from arena_eval.policy_worker.policy import Batch\n"
        "p.infer(Batch.of({'x': np.zeros((4, 1))}))\n"
        "heavy = [m for m in ('torch', 'metaworld', 'mujoco') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_torch_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # what a missing package looks like
    monkeypatch.delitem(
        sys.modules, "arena_eval.policy_worker.builtins.torch_policy", raising=False
    )
    with pytest.raises(ConfigError, match=r"pip install 'arena-eval\[policy\]'"):
        load_policy("torch", {"path": "model.pt"})


# -- zero / random ---------------------------------------------------------------------
def test_zero_shapes_and_any_observations() -> None:
    policy = load_policy("zero", {"action_shape": "4x7", "action_dtype": "float64"})
    spec = policy.spec()
    assert spec.observations is None  # accepts any observation dict
    assert spec.action_shape == (4, 7)
    assert spec.action_dtype == "float64"
    batch = {"anything": _readonly(np.arange(15, dtype=np.int16).reshape(5, 3))}
    out = policy.infer(Batch.of(batch))
    assert out.shape == (5, 4, 7)
    assert out.dtype == np.float64
    assert not out.any()
    assert out.flags.writeable and out.flags.c_contiguous
    check_actions(spec, out, 5)


def test_zero_with_obs_spec() -> None:
    policy = load_policy(
        "zero", {"obs": "robot_pov_cam_rgb:uint8:512x512x3, joint_pos:float32:54 ,t:int64:"}
    )
    spec = policy.spec()
    assert spec.observations == {
        "robot_pov_cam_rgb": FieldSpec("uint8", (512, 512, 3)),
        "joint_pos": FieldSpec("float32", (54,)),
        "t": FieldSpec("int64", ()),
    }
    batch: dict[str, np.ndarray] = {
        "robot_pov_cam_rgb": np.zeros((2, 512, 512, 3), dtype=np.uint8),
        "joint_pos": np.zeros((2, 54), dtype=np.float32),
        "t": np.zeros(2, dtype=np.int64),
    }
    assert spec.check_observations(batch) == 2
    assert policy.infer(Batch.of(batch)).shape == (2, 16, 36)
    assert PolicySpec.from_json(spec.to_json()) == spec


def test_zero_typed_args_from_python() -> None:
    policy = ZeroPolicy(action_shape=(2, 3), obs={"s": FieldSpec("float32", (3,))})
    assert policy.spec().action_shape == (2, 3)
    assert policy.infer(Batch.of({"s": np.zeros((1, 3), np.float32)})).shape == (1, 2, 3)


def test_empty_batch_is_rejected() -> None:
    with pytest.raises(SpecMismatch, match="empty"):
        load_policy("zero").infer(Batch.of({}))
    with pytest.raises(SpecMismatch, match="batch dimension"):
        batch_rows({"x": np.float32(1.0)})  # type: ignore[dict-item]


def test_random_seeded_bounds_and_dtype() -> None:
    args = {"action_shape": "8x5", "seed": "7", "low": "-0.5", "high": "2"}
    a, b = load_policy("random", args), load_policy("random", args)
    batch = {"x": _readonly(np.zeros((6, 2), dtype=np.float32))}
    first = [a.infer(Batch.of(batch)) for _ in range(3)]
    second = [b.infer(Batch.of(batch)) for _ in range(3)]
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x, y)
        assert x.shape == (6, 8, 5)
        assert x.dtype == np.float32
        assert x.min() >= -0.5 and x.max() <= 2.0
    assert not np.array_equal(first[0], first[1])  # the stream advances
    other = load_policy("random", {**args, "seed": "8"}).infer(Batch.of(batch))
    assert not np.array_equal(other, first[0])
    wide = np.concatenate([a.infer(Batch.of({"x": np.zeros(1000)})) for _ in range(3)])
    assert wide.min() < -0.4 and wide.max() > 1.9  # covers the range

    f64 = load_policy("random", {"action_dtype": "float64", "action_shape": "1x3"})
    assert f64.infer(Batch.of(batch)).dtype == np.float64
    ints = load_policy("random", {"action_dtype": "int32", "low": "-3", "high": "3"})
    out = ints.infer(Batch.of(batch))
    assert out.dtype == np.int32
    assert out.min() >= -3 and out.max() <= 3
    check_actions(ints.spec(), out, 6)


def test_check_actions_reports_shape_and_dtype() -> None:
    spec = PolicySpec(name="p", action_shape=(2, 3))
    with pytest.raises(SpecMismatch, match=r"returned float64\[4, 2, 3\], expected float32"):
        check_actions(spec, np.zeros((4, 2, 3)), 4)
    with pytest.raises(SpecMismatch, match="returned a list"):
        check_actions(spec, [1, 2], 4)


def test_policy_context_manager_closes() -> None:
    closed: list[bool] = []

    class P(Policy):
        def spec(self) -> PolicySpec:
            return PolicySpec(name="p", action_shape=(1, 1))

        def infer(self, batch: Batch) -> np.ndarray:
            return np.zeros((batch.rows, 1, 1), np.float32)

        def close(self) -> None:
            closed.append(True)

    with P() as p:
        p.reset(["a"])  # the default reset is a no-op
    assert closed == [True]


# -- metaworld-expert ------------------------------------------------------------------
def test_metaworld_task_lookup() -> None:
    pytest.importorskip("metaworld")
    from arena_eval.policy_worker.builtins.metaworld_expert import expert_policy_class

    assert expert_policy_class("door-open-v3").__name__ == "SawyerDoorOpenV3Policy"
    assert expert_policy_class("metaworld/door-open-v3").__name__ == "SawyerDoorOpenV3Policy"
    assert expert_policy_class("Meta-World/reach-v3").__name__ == "SawyerReachV3Policy"
    # irregular name: only ENV_POLICY_MAP knows it
    assert expert_policy_class("peg-insert-side-v3").__name__ == "SawyerPegInsertionSideV3Policy"
    import metaworld.policies

    for task, cls in metaworld.policies.ENV_POLICY_MAP.items():
        assert expert_policy_class(task) is cls
    with pytest.raises(ConfigError, match=r"task: no Meta-World scripted expert.*door-open-v3"):
        expert_policy_class("door-opn-v3")


def test_metaworld_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "metaworld", None)  # what a missing package looks like
    monkeypatch.setitem(sys.modules, "metaworld.policies", None)
    with pytest.raises(ConfigError, match=r"pip install 'arena-eval\[sim\]'"):
        load_policy("metaworld-expert", {"task": "door-open-v3"})


def test_metaworld_expert_spec_chunk_and_readonly_rows() -> None:
    pytest.importorskip("metaworld")
    policy = load_policy("metaworld-expert", {"task": "door-open-v3", "chunk": "3"})
    spec = policy.spec()
    assert spec.name == "metaworld-expert/door-open-v3"
    assert spec.observations == {"state": FieldSpec("float64", (39,))}
    assert spec.action_shape == (3, 4)
    assert spec.action_dtype == "float32"
    rng = np.random.default_rng(0)
    states = rng.uniform(-0.3, 0.3, size=(4, 39))
    before = states.copy()
    out = policy.infer(Batch.of({"state": states}))  # writable: must come back unchanged
    np.testing.assert_array_equal(states, before)
    again = policy.infer(Batch.of({"state": _readonly(states)}))  # read-only must work too
    np.testing.assert_array_equal(out, again)  # deterministic
    assert out.shape == (4, 3, 4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], out[:, 2])  # the chunk repeats the action
    with pytest.raises(ConfigError, match="chunk: must be >= 1"):
        load_policy("metaworld-expert", {"task": "door-open-v3", "chunk": "0"})


def test_metaworld_expert_solves_door_open() -> None:
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("metaworld")
    policy = load_policy("metaworld-expert", {"task": "metaworld/door-open-v3"})
    env = gym.make("Meta-World/MT1", env_name="door-open-v3", seed=0)
    try:
        obs, _ = env.reset(seed=0)
        success = False
        for _ in range(500):
            batch = {"state": _readonly(np.asarray(obs, dtype=np.float64)[None, :])}
            actions = policy.infer(Batch.of(batch))
            assert actions.shape == (1, 1, 4)
            obs, _, terminated, truncated, info = env.step(actions[0, 0])
            if info["success"]:
                success = True
                break
            if terminated or truncated:
                break
        assert success, "the scripted expert did not open the door within 500 steps"
    finally:
        env.close()
