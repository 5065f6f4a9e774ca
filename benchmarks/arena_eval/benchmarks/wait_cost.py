"""What ``WAIT 1`` after each result costs on a cluster: episodes/s of the result store.

Why: the failover safety (``broker/results.py``, docs/architecture.md "Failover")
adds one replica round trip per stored episode. This measures ``results.record``
of one episode with ``ARENA_WAIT_REPLICAS=1`` and ``=0``, interleaved in one run
so both see the same machine, and prints the ratio and what it means for a sim
worker at a given step rate.

    python3 -m arena_eval.benchmarks.wait_cost --redis-url redis://127.0.0.1:7000 \\
        --episodes 300 --steps-per-episode 150 --steps-per-s 400
"""

from __future__ import annotations

import argparse
import os
import secrets
import time

from arena_eval.broker import jobs, results
from arena_eval.broker.cluster import is_cluster
from arena_eval.broker.connection import connect
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--steps-per-episode", type=int, default=150)
    parser.add_argument("--steps-per-s", type=float, default=400.0)
    a = parser.parse_args()
    keys = Keys(f"wb{secrets.token_hex(3)}:")
    r = connect(RedisSettings(url=a.redis_url, prefix=keys.prefix))
    if not is_cluster(r):
        raise SystemExit("WAIT runs only on a cluster: give the URL of a cluster node")
    job_id = jobs.submit(r, keys, jobs.JobSpec("bench/none", "none", 2 * a.episodes))
    spent = {"1": 0.0, "0": 0.0}
    for i in range(2 * a.episodes):
        mode = "1" if i % 2 else "0"
        os.environ[results.ENV_WAIT_REPLICAS] = mode
        ep = EpisodeResult(index=i, length=a.steps_per_episode, seed=i, success=True)
        t0 = time.perf_counter()
        results.record(r, keys, job_id, "bench", time.time(), [ep], {}, {})
        spent[mode] += time.perf_counter() - t0
    for key in (keys.job(job_id), keys.job_results(job_id), keys.job_stats(job_id),
                keys.job_workers(job_id)):  # fmt: skip
        r.delete(key)
    r.zrem(keys.jobs(), job_id)
    r.delete(keys.units())
    per = {m: spent[m] / a.episodes * 1e3 for m in spent}
    episode_s = a.steps_per_episode / a.steps_per_s
    rate = {m: a.steps_per_episode / (episode_s + per[m] / 1e3) for m in per}
    print(f"record one episode: no WAIT {per['0']:.3f} ms, WAIT 1 {per['1']:.3f} ms "
          f"({per['1'] / per['0']:.2f}x)")  # fmt: skip
    print(
        f"a sim worker at {a.steps_per_s:g} steps/s, {a.steps_per_episode}-step episodes: "
        f"{rate['0']:.1f} -> {rate['1']:.1f} steps/s ({rate['1'] / rate['0']:.4f}x)"
    )


if __name__ == "__main__":
    main()
