"""Each worker default is defined once: the CLI, ``up``/``demo`` and the API agree.

A worker is built three ways -- from ``arena-eval sim serve`` / ``policy serve``
with no options, from the child command lines ``up`` and ``demo`` start, and from
the Python API -- and every way must come out with the same configuration as a
bare ``SimWorkerConfig()`` / ``PolicyWorkerConfig``. Command lines are parsed by
the real ``arena-eval`` click tree (option defaults filled in), exactly as a
child process would parse them. A default written a second time anywhere (the
stack's old ``--max-wait-ms 5.0``, a literal in an option) makes these fail.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import pytest
import typer.main
from typer.core import TyperGroup

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app
from arena_eval.cli.stack import LocalStack
from arena_eval.cli.stack_cmd import demo_stack, up_stack
from arena_eval.policy_worker.builtins.simple import ZeroPolicy
from arena_eval.policy_worker.config import PolicyWorkerConfig
from arena_eval.policy_worker.registry import parse_policy_args
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.config import SimWorkerConfig
from arena_eval.sim_worker.service import SimWorker

POOL = "cfg-pool"


def _parse(argv: Sequence[str]) -> dict[str, Any]:
    """The parameters ``arena-eval ARGV`` hands its command (defaults filled in)."""
    command = typer.main.get_command(app)
    args = list(argv)
    name = "arena-eval"
    while isinstance(command, TyperGroup):
        name = args.pop(0)
        found = command.commands.get(name)
        assert found is not None, f"no command {name!r} in {argv}"
        command = found
    return dict(command.make_context(name, args).params)


def _sim_config(argv: Sequence[str]) -> SimWorkerConfig:
    assert list(argv[:2]) == ["sim", "serve"], argv
    return SimWorkerConfig.from_options(_parse(argv))


def _policy_config(argv: Sequence[str]) -> PolicyWorkerConfig:
    """What ``policy serve`` builds from its options (field names; ``--policy-arg`` parsed)."""
    assert list(argv[:2]) == ["policy", "serve"], argv
    params = _parse(argv)
    names = {f.name for f in fields(PolicyWorkerConfig)} - {"redis", "policy_args"}
    knobs = {k: v for k, v in params.items() if k in names}
    return PolicyWorkerConfig(**knobs, policy_args=parse_policy_args(params["policy_arg"]))


def _children(stack: LocalStack, kind: str) -> list[list[str]]:
    found = [args for name, args in stack.planned() if name.startswith(kind)]
    assert found, (kind, stack.planned())
    return found


def test_sim_worker_from_cli_up_demo_and_api_has_one_configuration(
    settings: RedisSettings,
) -> None:
    expected = SimWorkerConfig()
    from_cli = _sim_config(["sim", "serve"])
    from_up = [_sim_config(a) for a in _children(up_stack(settings, _parse(["up"])), "sim")]
    from_demo = [_sim_config(a) for a in _children(demo_stack(settings, _parse(["demo"])), "sim")]
    from_api = SimWorker(settings).config
    from_stack_api = [_sim_config(a) for a in _children(LocalStack(settings), "sim")]
    assert from_cli.knobs() == expected.knobs()
    assert [c.knobs() for c in from_up] == [expected.knobs()] * LocalStack.sim_workers
    assert [c.knobs() for c in from_demo] == [expected.knobs()] * LocalStack.sim_workers
    assert [c.knobs() for c in from_stack_api] == [expected.knobs()] * LocalStack.sim_workers
    assert from_api.knobs() == expected.knobs()


def test_policy_worker_from_cli_up_and_api_has_one_configuration(
    settings: RedisSettings,
) -> None:
    expected = PolicyWorkerConfig(pool=POOL, policy="zero", policy_args={"action_shape": "1x1"})
    cli = [
        "policy",
        "serve",
        "--pool",
        POOL,
        "--policy",
        "zero",
        "--policy-arg",
        "action_shape=1x1",
    ]
    from_cli = _policy_config(cli)
    up = ["up", "--pool", POOL, "--policy", "zero", "--policy-arg", "action_shape=1x1"]
    stack = up_stack(settings, _parse(up))
    from_up = [_policy_config(a) for a in _children(stack, "policy")]
    assert from_cli.knobs() == expected.knobs()
    assert [c.knobs() for c in from_up] == [expected.knobs()] * LocalStack.policy_workers
    worker = PolicyWorker(POOL, ZeroPolicy(action_shape="1x1"), settings)
    try:  # an instance names its class and has no CLI arguments; every other knob agrees
        skip = {"policy", "policy_args"}
        got = {k: v for k, v in worker.config.knobs().items() if k not in skip}
        assert got == {k: v for k, v in expected.knobs().items() if k not in skip}
    finally:
        worker.close()


def test_demo_runs_the_expert_with_the_policy_workers_defaults(settings: RedisSettings) -> None:
    stack = demo_stack(settings, _parse(["demo"]))
    (child,) = _children(stack, "policy")
    config = _policy_config(child)
    bare = PolicyWorkerConfig(
        pool=config.pool, policy=config.policy, policy_args=config.policy_args
    )
    assert config.policy == "metaworld-expert"
    assert config.knobs() == bare.knobs()


def test_a_stack_passes_on_only_what_its_user_set(settings: RedisSettings) -> None:
    stack = up_stack(
        settings, _parse(["up", "--pool", POOL, "--policy", "zero", "--num-envs", "3"])
    )
    stack.max_wait_ms = 0.5
    (policy,) = _children(stack, "policy")
    assert _policy_config(policy).max_wait_ms == 0.5
    assert "--max-wait-ms" in policy
    for sim in _children(stack, "sim"):
        assert sim == ["sim", "serve", "--num-envs", "3"]
        assert _sim_config(sim).num_envs == 3


def test_sim_worker_from_config_uses_every_knob(settings: RedisSettings) -> None:
    config = SimWorkerConfig(
        num_envs=3, lease_ms=2500, block_ms=50, policy_timeout_s=4.0, max_policy_timeouts=7,
        pool_poll_s=0.25, vectorization="async", max_deliveries=9, worker_id="sim-w",
        redis=settings,
    )  # fmt: skip
    worker = SimWorker.from_config(config)
    assert worker.config == config
    assert worker.worker_id == "sim-w" and worker.settings == settings
    assert (worker.queue.lease_ms, worker.queue.block_ms, worker.queue.max_deliveries) == (
        2500, 50, 9,
    )  # fmt: skip
    assert worker.runner.envs.vectorization == "async"
    assert worker.runner.pools.pool_poll_s == 0.25
    assert worker.runner.clients.timeout_s == 4.0
    assert worker.heartbeat.interval_s == pytest.approx(min(0.5, 2500 / 3000.0))


def test_every_knob_is_documented() -> None:
    lines = inspect.getsource(SimWorkerConfig).splitlines()
    for f in fields(SimWorkerConfig):
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{f.name}:"))
        assert lines[at - 1].strip().startswith("#:"), f"{f.name} has no doc comment"


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"vectorization": "bogus"}, "vectorization must be one of sync, async"),
        ({"num_envs": 0}, "num_envs must be at least 1"),
        ({"lease_ms": 99}, "lease_ms must be at least 100"),
        ({"policy_timeout_s": 0.0}, "policy_timeout_s must be positive"),
        ({"max_policy_timeouts": 0}, "max_policy_timeouts must be at least 1"),
        ({"max_deliveries": 0}, "max_deliveries must be at least 1"),
    ],
)
def test_a_bad_knob_is_refused_when_the_config_is_built(
    knobs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SimWorkerConfig(**knobs)
