"""Env steps/s of one sim worker's rollout, synchronous vs double-buffered (``--overlap``).

Why this set-up: overlap hides inference behind stepping, so it pays most when the two
take about as long. The benchmark first times the env (a Meta-World task with zero
actions, ``num_envs`` slots stepped together) and gives the pool a stand-in model
(``overlap_policy.SleepCostPolicy``, in its own process) whose forward pass for all
``num_envs`` rows costs that same time by default: ``row_ms`` = the env's time per slot
step. Then it runs the same episodes through the real rollout loop (``run_episodes``,
real Redis, real pool worker) both ways, alternating ``rounds`` times so that a change of
machine load hits both, and prints the ratio of env steps per second from that one run.

The ceiling: with a cost per row, overlap turns ``step + inference`` into
``max(step, inference)``: 2x when they are equal. With a fixed cost per request
(``--fixed-ms``, ``--row-ms 0``) each lane pays the whole cost for half the rows, so the
ceiling is 1.5x, reached when one lane's step takes as long as one forward pass.

``arena-eval bench overlap`` (or ``python -m arena_eval.benchmarks.overlap``)
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import numpy as np

from arena_eval.benchmarks.latency import _child
from arena_eval.broker.connection import resolve_url
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.metrics import SIM_MS_FIELD
from arena_eval.broker.settings import RedisSettings

POLICY = "arena_eval.benchmarks.overlap_policy:SleepCostPolicy"
TASK = "metaworld/reach-v3"


def env_step_ms(task: str, num_envs: int, steps: int = 60) -> float:
    """Milliseconds per step of ``num_envs`` slots stepped together, with zero actions."""
    from arena_eval.sim_worker.envs import make_env

    with make_env(task, num_envs) as env:
        env.reset(np.arange(num_envs), np.arange(num_envs))
        zeros = np.zeros((num_envs, env.action_dim()), np.float32)
        for _ in range(10):
            env.step(zeros)
        t0 = time.perf_counter()
        for _ in range(steps):
            env.step(zeros)
        return (time.perf_counter() - t0) / steps * 1e3


def _run(
    settings: RedisSettings, pool: str, task: str, slots: tuple[int, ...], indices: list[int],
    max_steps: int,
) -> dict[str, float]:  # fmt: skip
    """One rollout of ``indices``; with two entries in ``slots``, double-buffered."""
    from arena_eval.sim_worker.chunking import ChunkedPolicy
    from arena_eval.sim_worker.client import PolicyClient
    from arena_eval.sim_worker.envs import make_env
    from arena_eval.sim_worker.rollout import RolloutStats, Twin, run_episodes

    totals = {"steps": 0.0, "requests": 0.0, "sim_ms": 0.0}

    def sink(_batch: list[EpisodeResult], stats: RolloutStats) -> None:
        totals["steps"] += stats.steps
        totals["requests"] += stats.requests
        totals["sim_ms"] += stats.sums.get(SIM_MS_FIELD, 0.0)

    clients = [PolicyClient(pool, settings, timeout_s=60) for _ in slots]
    envs = [make_env(task, n, max_steps=max_steps) for n in slots]
    try:
        policies = [ChunkedPolicy(c, n) for c, n in zip(clients, slots, strict=True)]
        twin = Twin(envs[1], policies[1]) if len(slots) == 2 else None
        t0 = time.perf_counter()
        run_episodes(
            envs[0], policies[0], job_id="bench", indices=indices, seed_of=lambda i: i,
            on_episodes=sink, task=task, twin=twin,
        )  # fmt: skip
        totals["wall_s"] = time.perf_counter() - t0
    finally:
        for env in envs:
            env.close()
        for c in clients:
            c.close()
    return totals


def run_overlap(
    *, num_envs: int = 8, episodes: int = 16, max_steps: int = 100, task: str = TASK,
    fixed_ms: float = 0.0, row_ms: float | None = None, max_wait_ms: float = 0.0,
    rounds: int = 2, settings: RedisSettings | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Steps/s of the synchronous loop and of the overlapped one, and their ratio."""
    if num_envs < 2:
        raise ValueError("overlap needs at least 2 env slots (one per lane)")
    settings = settings or RedisSettings.from_env()
    url = resolve_url(settings)
    step_ms = env_step_ms(task, num_envs)
    if row_ms is None:
        row_ms = step_ms / num_envs  # a forward pass of all rows == one step of all slots
    pool = f"bench-overlap-{uuid.uuid4().hex[:8]}"
    serve = ["-m", "arena_eval.cli", "policy", "serve", "--pool", pool, "--policy", POLICY,
             "--policy-arg", f"fixed_ms={fixed_ms}", "--policy-arg", f"row_ms={row_ms}",
             "--max-batch", str(num_envs), "--max-wait-ms", str(max_wait_ms)]  # fmt: skip
    env = {"ARENA_REDIS_URL": url, "ARENA_PREFIX": settings.prefix}
    first = (num_envs + 1) // 2
    layouts = {"sync": (num_envs,), "overlap": (first, num_envs - first)}
    totals = {mode: {"steps": 0.0, "wall_s": 0.0, "sim_ms": 0.0} for mode in layouts}
    s = settings.with_url(url)
    indices = list(range(episodes))
    with _child(serve, env):
        for slots in layouts.values():  # warm-up: imports, handshakes, first resets
            _run(s, pool, task, slots, indices[: len(slots) * 2], max_steps)
        for _ in range(rounds):
            for mode, slots in layouts.items():
                got = _run(s, pool, task, slots, indices, max_steps)
                for key in totals[mode]:
                    totals[mode][key] += got[key]
    rate = {m: t["steps"] / t["wall_s"] for m, t in totals.items()}
    return {
        "task": task,
        "num_envs": num_envs,
        "episodes_per_round": episodes,
        "rounds": rounds,
        "max_steps": max_steps,
        "env_step_ms": round(step_ms, 3),
        "policy_ms_all_rows": round(fixed_ms + row_ms * num_envs, 3),
        "policy_fixed_ms": fixed_ms,
        "policy_row_ms": round(row_ms, 4),
        "max_wait_ms": max_wait_ms,
        "sync_steps_per_s": round(rate["sync"], 1),
        "overlap_steps_per_s": round(rate["overlap"], 1),
        "sync_sim_ms_per_step": round(totals["sync"]["sim_ms"] / totals["sync"]["steps"], 4),
        "overlap_sim_ms_per_step": round(
            totals["overlap"]["sim_ms"] / totals["overlap"]["steps"], 4
        ),
        "ratio": round(rate["overlap"] / rate["sync"], 2),
    }


def format_result(result: dict[str, Any]) -> str:
    """Two lines a person reads: the set-up, then the figures and the ratio."""
    return (
        f"{result['task']}, 1 sim worker x {result['num_envs']} env slots: env step "
        f"{result['env_step_ms']:.2f} ms, policy {result['policy_ms_all_rows']:.2f} ms for all "
        f"rows ({result['policy_fixed_ms']:g} ms + {result['policy_row_ms']:.3f} ms/row), "
        f"batch window {result['max_wait_ms']:g} ms\n"
        f"sync {result['sync_steps_per_s']:.0f} env steps/s, overlap "
        f"{result['overlap_steps_per_s']:.0f} env steps/s = {result['ratio']:.2f}x"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--task", default=TASK)
    parser.add_argument("--fixed-ms", type=float, default=0.0)
    parser.add_argument("--row-ms", type=float, default=None)
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    result = run_overlap(
        num_envs=args.num_envs, episodes=args.episodes, max_steps=args.max_steps,
        task=args.task, fixed_ms=args.fixed_ms, row_ms=args.row_ms,
        max_wait_ms=args.max_wait_ms, rounds=args.rounds,
    )  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
