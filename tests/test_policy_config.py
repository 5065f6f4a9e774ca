"""Each policy-worker default is defined once, in ``PolicyWorkerConfig``.

The CLI's option defaults, ``build_worker`` (the Python API) and a worker made
from an instance must all come out with the same knobs as a bare config.
"""

from __future__ import annotations

import typer.main

from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.policy_cmd import app
from arena_eval.policy_worker.builtins.simple import ZeroPolicy
from arena_eval.policy_worker.config import PolicyWorkerConfig
from arena_eval.policy_worker.serve import build_worker
from arena_eval.policy_worker.server import PolicyWorker

POOL = "cfg"


def test_cli_option_defaults_are_the_config_defaults() -> None:
    command = typer.main.get_command(app)
    serve = command.commands["serve"]  # type: ignore[attr-defined]
    defaults = {p.name: p.default for p in serve.params}
    config = PolicyWorkerConfig(pool=POOL, policy="zero")
    shown = {
        name: getattr(config, name)
        for name in ("device", "max_batch", "max_wait_ms", "claim_idle_ms", "max_deliveries")
    }
    assert {name: defaults[name] for name in shown} == shown
    assert defaults["worker_id"] is None


def test_api_and_instance_workers_get_the_config_defaults(settings: RedisSettings) -> None:
    expected = PolicyWorkerConfig(pool=POOL, policy="zero", policy_args={"action_shape": "1x1"})
    built = build_worker(POOL, "zero", {"action_shape": "1x1"}, settings)
    from_instance = PolicyWorker(POOL, ZeroPolicy(action_shape="1x1"), settings)
    try:
        assert built.config.knobs() == expected.knobs()
        skip = {"policy", "policy_args"}  # an instance names its class, and has no CLI args
        for name, value in expected.knobs().items():
            if name not in skip:
                assert getattr(from_instance.config, name) == value, name
        assert built.batcher.max_wait_s == from_instance.batcher.max_wait_s == 0.002  # type: ignore[attr-defined]
    finally:
        built.close()
        from_instance.close()


def test_from_config_uses_every_knob(settings: RedisSettings) -> None:
    config = PolicyWorkerConfig(
        pool=POOL, policy="zero", policy_args={"action_shape": "1x1"}, max_batch=3,
        max_wait_ms=7.5, claim_idle_ms=123, max_deliveries=9, worker_id="w-1", block_ms=50,
        hung_after_s=12.0, redis=settings,
    )  # fmt: skip
    worker = PolicyWorker.from_config(config)
    try:
        assert worker.config is config
        assert worker.batcher.max_batch == 3 and worker.worker_id == "w-1"
        names = ("max_batch", "max_wait_ms", "claim_idle_ms", "max_deliveries", "worker_id",
                 "block_ms", "hung_after_s")  # fmt: skip
        assert {name: getattr(worker.config, name) for name in names} == {
            "max_batch": 3, "max_wait_ms": 7.5, "claim_idle_ms": 123, "max_deliveries": 9,
            "worker_id": "w-1", "block_ms": 50, "hung_after_s": 12.0,
        }  # fmt: skip
    finally:
        worker.close()
