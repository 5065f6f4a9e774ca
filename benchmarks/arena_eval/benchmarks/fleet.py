"""Whole-evaluation throughput, episodes per hour: in-process vs seed-style vs arena-eval.

What evaluators pay for is wall time per suite, not latency per request. This benchmark
runs the same Meta-World episodes (one task, ``max_steps`` each: a zero action never
succeeds at ``reach-v3``, so every episode has the same length) against the same stand-in
GPU model (``AffineCostPolicy``: each forward pass *sleeps* ``a + b * rows``, freeing the
CPU as a GPU does) in three ways, all in one run:

* (a) in-process: this process, one vector env of ``num_envs`` slots, the policy called
  directly: the limit of one core's worth of sim with a synchronous loop;
* (b) seed-style: K sim processes, each sending its slots' observations to one ZeroMQ REP
  server holding the one model, answering one request at a time (``fleet_seed``);
* (c) arena-eval: a submitted job run by K ``sim serve`` workers and one ``policy serve``
  worker, synchronous and with ``--overlap`` (``fleet_arena``);

with K = 1, 2, 4 for (b) and (c). Every sim runs the sim worker's rollout loop
(``fleet_rollout``). The figures and the per-sim-core definition are in ``fleet_setup``.
Two ratios come from the one run: (c) with overlap per sim core over (a) at each K, and
(c) over (b) at each K (the issue's targets: >= 0.8 and, at K = 4, >= 3).

``arena-eval bench fleet [--k 1,2,4] [--episodes 128] [--a-ms 20] [--b-ms 0.2] [--json]``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from arena_eval.benchmarks.fleet_arena import run_arena
from arena_eval.benchmarks.fleet_seed import run_seed
from arena_eval.benchmarks.fleet_setup import FleetSetup, figures
from arena_eval.broker.settings import RedisSettings

NAMES = {
    "a": "(a) in-process",
    "b": "(b) seed ZMQ",
    "c": "(c) arena-eval",
    "c+overlap": "(c) + overlap",
}


def run_in_process(setup: FleetSetup) -> dict[str, Any]:
    """(a): one vector env and the policy called directly, in this process."""
    from arena_eval.benchmarks.fleet_rollout import DirectClient, rollout
    from arena_eval.benchmarks.policies import AffineCostPolicy
    from arena_eval.sim_worker.envs import make_env

    policy = AffineCostPolicy(**setup.policy_args())
    client = DirectClient(policy)
    with make_env(setup.task, setup.num_envs, max_steps=setup.max_steps) as env:
        run = rollout(env, client, range(setup.episodes), setup.task)
    return figures(
        "a", 1, episodes=run.episodes, wall_s=run.wall_s, sim_cores=1,
        infer_s=client.clock.infer_s, batches=client.clock.batches, rows=client.clock.rows,
        length_sum=run.length_sum, sim_ms=run.sim_ms, requests=run.requests,
        round_trip_ms=run.round_trip_ms,
    )  # fmt: skip


def action_dim(task: str) -> int:
    from arena_eval.sim_worker.envs import make_env

    with make_env(task, 1, max_steps=1) as env:
        return env.action_dim()


def run_fleet(
    setup: FleetSetup,
    *,
    settings: RedisSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every configuration once, (a) first, then (b), (c), (c) + overlap for each K."""
    settings = settings or RedisSettings.from_env()
    say = progress or (lambda _text: None)
    dim = action_dim(setup.task)
    if dim != setup.action_dim:
        from dataclasses import replace

        setup = replace(setup, action_dim=dim)
    say("(a) in-process")
    rows = [run_in_process(setup)]
    for k in setup.ks:
        say(f"(b) seed-style, K={k}")
        rows.append(run_seed(setup, k))
        for overlap in (False, True):
            say(f"(c) arena-eval{' + overlap' if overlap else ''}, K={k}")
            rows.append(run_arena(setup, k, overlap=overlap, settings=settings))
    return {"setup": setup.describe(), "runs": rows, "ratios": ratios(rows, setup)}


def batching_ceiling(setup: FleetSetup, k: int) -> float:
    """The most (c) can beat (b) by with K sims when the model is the bottleneck: one pass of
    all K sims' rows against K one-sim passes, ``K (a + b N) / (a + b K N)``."""
    a, b, n = setup.a_ms, setup.b_ms, setup.num_envs
    return k * (a + b * n) / (a + b * k * n) if a + b * n > 0 else float(k)


def ratios(rows: list[dict[str, Any]], setup: FleetSetup) -> list[dict[str, Any]]:
    """Per K: (c)+overlap per sim core / (a), and (c), (c)+overlap episodes/h / (b), with the
    batching ceiling of the latter."""
    by = {(r["config"], r["k"]): r for r in rows}
    a = by.get(("a", 1))
    out = []
    for k in sorted({r["k"] for r in rows if r["config"] != "a"}):
        b, c, co = by.get(("b", k)), by.get(("c", k)), by.get(("c+overlap", k))
        entry: dict[str, Any] = {"k": k, "ceiling_vs_b": round(batching_ceiling(setup, k), 2)}
        if a and co and a["per_sim_core"]:
            entry["overlap_per_core_vs_a"] = round(co["per_sim_core"] / a["per_sim_core"], 2)
        if a and c and a["per_sim_core"]:
            entry["sync_per_core_vs_a"] = round(c["per_sim_core"] / a["per_sim_core"], 2)
        if b and b["episodes_per_h"]:
            if c:
                entry["sync_vs_b"] = round(c["episodes_per_h"] / b["episodes_per_h"], 2)
            if co:
                entry["overlap_vs_b"] = round(co["episodes_per_h"] / b["episodes_per_h"], 2)
        out.append(entry)
    return out


def format_table(result: dict[str, Any]) -> str:
    """The runs, one line each, then the ratios and what "per sim core" means."""
    s = result["setup"]
    lines = [
        f"{s['task']}, {s['episodes']} episodes of {s['max_steps']} steps per run, "
        f"{s['num_envs']} env slots per sim; model sleeps {s['a_ms']:g} ms + {s['b_ms']:g} "
        f"ms/row per forward pass; {s['cpu_cores']} CPU cores",
        f"{'configuration':<16s} {'K':>2s} {'episodes/h':>11s} {'per sim core':>13s} "
        f"{'model busy':>11s} {'mean batch rows':>16s} {'sim busy':>9s} {'wait ms':>8s} "
        f"{'ep len':>7s}",
    ]
    for r in result["runs"]:
        lines.append(
            f"{NAMES[r['config']]:<16s} {r['k']:>2d} {r['episodes_per_h']:>11.0f} "
            f"{r['per_sim_core']:>13.0f} {r['busy_fraction']:>11.0%} "
            f"{r['mean_batch_rows']:>16.1f} {r['sim_busy']:>9.0%} {r['round_trip_ms']:>8.1f} "
            f"{r['mean_episode_length']:>7.1f}"
        )
    lines.append("ratios (this run):")
    for q in result["ratios"]:
        parts = []
        if "overlap_per_core_vs_a" in q:
            parts.append(f"(c)+overlap per sim core / (a) = {q['overlap_per_core_vs_a']:.2f}x")
        if "sync_per_core_vs_a" in q:
            parts.append(f"(c) per sim core / (a) = {q['sync_per_core_vs_a']:.2f}x")
        if "sync_vs_b" in q:
            parts.append(f"(c) / (b) = {q['sync_vs_b']:.2f}x")
        if "overlap_vs_b" in q:
            parts.append(f"(c)+overlap / (b) = {q['overlap_vs_b']:.2f}x")
        parts.append(f"batching ceiling / (b) = {q['ceiling_vs_b']:.2f}x")
        lines.append(f"  K={q['k']}: " + "; ".join(parts))
    lines.append(
        f"per sim core = episodes/h / min(K, {s['cpu_cores']} CPU cores) ((a): / 1); model "
        "busy = time in the forward pass / wall; sim busy = env stepping / (K x wall); wait "
        "ms = a sim's mean wait for one answer; batching ceiling = K (a + b N) / (a + b K N), "
        "N env slots per sim; targets: (c)+overlap per sim core >= 0.8x (a), (c) >= 3x (b) at "
        "K=4"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=FleetSetup.episodes)
    parser.add_argument("--k", default="1,2,4")
    parser.add_argument("--a-ms", type=float, default=FleetSetup.a_ms)
    parser.add_argument("--b-ms", type=float, default=FleetSetup.b_ms)
    args = parser.parse_args(argv)
    setup = FleetSetup(episodes=args.episodes, ks=tuple(int(k) for k in args.k.split(",")),
                       a_ms=args.a_ms, b_ms=args.b_ms)  # fmt: skip
    print(json.dumps(run_fleet(setup), indent=2))


if __name__ == "__main__":
    main()
