"""Env steps/s of one sim worker's rollout, synchronous vs double-buffered (``--overlap``).

Why this set-up: overlap hides inference behind stepping, so it pays most when the two
take about as long. The benchmark first runs the synchronous rollout against a pool whose
model costs nothing, which times the env step as the rollout sees it (``num_envs`` slots
of a Meta-World task stepped together with zero actions, resets included) and the
fabric's own round trip for ``num_envs`` rows. It then gives the pool a stand-in model
(``overlap_policy.SleepCostPolicy``, in its own process) whose cost per row makes the
*policy latency* -- the round trip a sim waits for, fabric included -- of a request for
all rows equal to that env step, by default: ``row_ms = (step - round trip) / num_envs``.
Then it runs the same episodes through the real rollout loop
(``run_episodes``, real Redis, real pool worker) both ways, alternating ``rounds`` times so
that a change of machine load hits both, and prints the ratio of env steps per second
from that one run, with the round trips and sim time per step each way.

The ceiling: with a cost per row, overlap turns ``step + latency`` into
``max(step, latency)`` per lane, less the fabric's per-request cost, which each lane pays
(two requests per step of every slot instead of one): 2x when step and latency are equal
and that cost is nil. With a fixed cost per request (``--fixed-ms``, ``--row-ms 0``) each
lane pays the whole cost for half the rows, so the ceiling is 1.5x.

The default, 64 slots of ``metaworld/reach-v3``, makes one step of all slots about 16-20 ms on
this VM: the regime the issue starts from (lerobot#3275: env steps of about 20 ms). With 16
slots (a 4-5 ms step) the fabric's own round trip (about 1 ms, paid once per lane) is a
quarter of the step and caps the ratio near ``2 S / (S + f)`` = 1.6x before any jitter.

``arena-eval bench overlap`` (or ``python -m arena_eval.benchmarks.overlap``)
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from arena_eval.benchmarks.latency import _child
from arena_eval.broker.connection import resolve_url
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.metrics import SIM_MS_FIELD, SUM_PREFIX
from arena_eval.broker.settings import RedisSettings

POLICY = "arena_eval.benchmarks.overlap_policy:SleepCostPolicy"
TASK = "metaworld/reach-v3"
#: Steps of the short calibration run, whose cost the long one's is measured against.
_CALIBRATION_SHORT = 10
ROUND_TRIP = f"{SUM_PREFIX}round_trip_ms"


def _run(
    settings: RedisSettings, pool: str, task: str, slots: tuple[int, ...], indices: list[int],
    max_steps: int,
) -> dict[str, float]:  # fmt: skip
    """One rollout of ``indices``; with two entries in ``slots``, double-buffered."""
    from arena_eval.sim_worker.chunking import ChunkedPolicy
    from arena_eval.sim_worker.client import PolicyClient
    from arena_eval.sim_worker.envs import make_env
    from arena_eval.sim_worker.rollout import RolloutStats, Twin, run_episodes

    totals = {"steps": 0.0, "requests": 0.0, "sim_ms": 0.0, "round_trip_ms": 0.0}

    def sink(_batch: list[EpisodeResult], stats: RolloutStats) -> None:
        totals["steps"] += stats.steps
        totals["requests"] += stats.requests
        totals["sim_ms"] += stats.sums.get(SIM_MS_FIELD, 0.0)
        totals["round_trip_ms"] += stats.sums.get(ROUND_TRIP, 0.0)

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


def _step_ms(short: dict[str, float], long: dict[str, float], num_envs: int) -> float:
    """One step of all slots, from two runs of one episode per slot that differ only in length.

    The difference cancels what both pay once: the first reset of every slot (about 7 ms a
    Meta-World slot, more than a step), which is not a step and must not set the model's cost.
    """
    steps = long["steps"] - short["steps"]
    if steps <= 0:
        return long["sim_ms"] / max(long["steps"], 1) * num_envs
    return (long["sim_ms"] - short["sim_ms"]) / steps * num_envs


def run_overlap(
    *, num_envs: int = 64, episodes: int = 128, max_steps: int = 100, task: str = TASK,
    fixed_ms: float = 0.0, row_ms: float | None = None, max_wait_ms: float = 0.0,
    rounds: int = 2, settings: RedisSettings | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Steps/s of the synchronous loop and of the overlapped one, and their ratio."""
    if num_envs < 2:
        raise ValueError("overlap needs at least 2 env slots (one per lane)")
    settings = settings or RedisSettings.from_env()
    url = resolve_url(settings)
    s = settings.with_url(url)
    env = {"ARENA_REDIS_URL": url, "ARENA_PREFIX": settings.prefix}

    def serve(pool: str, fixed: float, row: float) -> list[str]:
        return ["-m", "arena_eval.cli", "policy", "serve", "--pool", pool, "--policy", POLICY,
                "--policy-arg", f"fixed_ms={fixed}", "--policy-arg", f"row_ms={row}",
                "--max-batch", str(num_envs), "--max-wait-ms", str(max_wait_ms)]  # fmt: skip

    free = f"bench-overlap-free-{uuid.uuid4().hex[:8]}"
    short_steps = min(_CALIBRATION_SHORT, max_steps - 1)
    with _child(serve(free, 0.0, 0.0), env):
        _run(s, free, task, (num_envs,), list(range(num_envs)), 10)  # warm-up
        short = _run(s, free, task, (num_envs,), list(range(num_envs)), max(short_steps, 1))
        timed = _run(s, free, task, (num_envs,), list(range(num_envs)), max_steps)
    step_ms = _step_ms(short, timed, num_envs)
    fabric_ms = timed["round_trip_ms"] / max(timed["requests"], 1)
    if row_ms is None:  # latency of all rows (fabric + model) == one step of all slots
        row_ms = max(0.0, step_ms - fabric_ms - fixed_ms) / num_envs
    pool = f"bench-overlap-{uuid.uuid4().hex[:8]}"
    first = (num_envs + 1) // 2
    layouts = {"sync": (num_envs,), "overlap": (first, num_envs - first)}
    keys = ("steps", "wall_s", "sim_ms", "requests", "round_trip_ms")
    totals = {mode: dict.fromkeys(keys, 0.0) for mode in layouts}
    indices = list(range(episodes))
    with _child(serve(pool, fixed_ms, row_ms), env):
        for slots in layouts.values():  # warm-up: imports, handshakes, first resets
            _run(s, pool, task, slots, indices[: len(slots) * 2], 10)
        for _ in range(rounds):
            for mode, slots in layouts.items():
                got = _run(s, pool, task, slots, indices, max_steps)
                for key in keys:
                    totals[mode][key] += got[key]
    rate = {m: t["steps"] / t["wall_s"] for m, t in totals.items()}
    out: dict[str, Any] = {
        "task": task,
        "num_envs": num_envs,
        "episodes_per_round": episodes,
        "rounds": rounds,
        "max_steps": max_steps,
        "env_step_ms": round(step_ms, 3),
        "fabric_round_trip_ms": round(fabric_ms, 3),
        "policy_fixed_ms": fixed_ms,
        "policy_row_ms": round(row_ms, 4),
        "max_wait_ms": max_wait_ms,
    }
    for mode, t in totals.items():
        out[f"{mode}_steps_per_s"] = round(rate[mode], 1)
        out[f"{mode}_round_trip_ms"] = round(t["round_trip_ms"] / max(t["requests"], 1), 3)
        out[f"{mode}_sim_ms_per_slot_step"] = round(t["sim_ms"] / max(t["steps"], 1), 4)
    out["ratio"] = round(rate["overlap"] / rate["sync"], 2)
    return out


def format_result(result: dict[str, Any]) -> str:
    """Three lines a person reads: the set-up, the latencies, and the ratio."""
    r = result
    return (
        f"{r['task']}, 1 sim worker x {r['num_envs']} env slots: env step {r['env_step_ms']:.2f} "
        f"ms; model {r['policy_fixed_ms']:g} ms + {r['policy_row_ms']:.3f} ms/row; fabric round "
        f"trip {r['fabric_round_trip_ms']:.2f} ms; batch window {r['max_wait_ms']:g} ms\n"
        f"policy latency per request: sync {r['sync_round_trip_ms']:.2f} ms ({r['num_envs']} "
        f"rows), overlap {r['overlap_round_trip_ms']:.2f} ms (half the rows)\n"
        f"sync {r['sync_steps_per_s']:.0f} env steps/s, overlap "
        f"{r['overlap_steps_per_s']:.0f} env steps/s = {r['ratio']:.2f}x"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=128)
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
