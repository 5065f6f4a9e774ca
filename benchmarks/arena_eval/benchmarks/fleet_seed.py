"""``bench fleet`` (b), seed-style: K sim processes, one ZeroMQ REP server holding the one model.

This is how the seed evaluates: each sim process steps its own env slots and sends all of
their observations to a REP server (``zmq_baseline.serve``: msgpack, arrays as np.save
bytes) that answers one request at a time, so the K sims queue for the model. The server
runs the same ``AffineCostPolicy`` as the pool and times its forward passes like a policy
worker does; it prints those counts when it is told to stop.

The server (its imports done) and the sims (their envs built) print ``ready``, and the sims
start together when the parent writes ``go``; each prints its ``RolloutFigures`` (with the
time its last episode ended) as one JSON line. Sim ``i`` of K runs episodes ``i, i + K, ...``.

``python -m arena_eval.benchmarks.fleet_seed server PORT A_MS B_MS ACTION_SHAPE`` and
``python -m arena_eval.benchmarks.fleet_seed sim PORT TASK NUM_ENVS MAX_STEPS ACTION_DIM
FIRST STRIDE TOTAL`` are the children; ``run_seed`` is the parent side.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from arena_eval.benchmarks.fleet_procs import Children
from arena_eval.benchmarks.fleet_setup import FleetSetup, cpu_cores, figures

_READY = "ready"


def run_seed(setup: FleetSetup, k: int) -> dict[str, Any]:
    """One seed-style run with ``k`` sims; the table row (``fleet_setup.figures``)."""
    import zmq

    from arena_eval.benchmarks.latency import _free_port

    port = _free_port()
    module = "arena_eval.benchmarks.fleet_seed"
    with Children() as kids:
        server = kids.start(
            ["-m", module, "server", str(port), str(setup.a_ms), str(setup.b_ms),
             setup.action_shape], pipes=True,
        )  # fmt: skip
        sim_args = ["-m", module, "sim", str(port), setup.task, str(setup.num_envs),
                    str(setup.max_steps), str(setup.action_dim)]  # fmt: skip
        sims = [
            kids.start([*sim_args, str(i), str(k), str(setup.episodes)], pipes=True)
            for i in range(k)
        ]
        for proc in (server, *sims):
            if _line(proc) != _READY:
                raise kids.failed(proc, "a seed-style process did not start")
        t0 = time.time()
        for sim in sims:
            assert sim.stdin is not None
            sim.stdin.write("go\n")
            sim.stdin.flush()
        runs = []
        for sim in sims:
            try:
                runs.append(json.loads(_line(sim)))
            except ValueError:
                raise kids.failed(sim, "a seed-style sim failed") from None
        ctx = zmq.Context()
        sock = ctx.socket(zmq.REQ)
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send(b"stop")
        sock.recv()
        sock.close(linger=0)
        ctx.term()
        try:
            model = json.loads(_line(server))
        except ValueError:
            raise kids.failed(server, "the seed server failed") from None
    wall = max(run["finished_at"] for run in runs) - t0
    return figures(
        "b", k, episodes=sum(r["episodes"] for r in runs), wall_s=wall,
        sim_cores=min(k, cpu_cores()), infer_s=model["infer_s"], batches=model["batches"],
        rows=model["rows"], length_sum=sum(r["length_sum"] for r in runs),
        sim_ms=sum(r["sim_ms"] for r in runs), requests=sum(r["requests"] for r in runs),
        round_trip_ms=sum(r["round_trip_ms"] for r in runs),
    )  # fmt: skip


def _line(proc: Any) -> str:
    """The child's next line of ours (``ready`` or a JSON object), skipping any other output
    a library printed; "" at end of file."""
    for raw in proc.stdout:
        line = str(raw).strip()
        if line == _READY or line.startswith("{"):
            return line
    return ""


def _server(port: int, a_ms: str, b_ms: str, action_shape: str) -> None:
    from arena_eval.benchmarks.fleet_rollout import ModelClock
    from arena_eval.benchmarks.policies import AffineCostPolicy
    from arena_eval.benchmarks.zmq_baseline import serve

    policy = AffineCostPolicy(a_ms, b_ms, action_shape)
    clock = ModelClock()

    def infer(obs: dict[bytes, Any]) -> Any:
        return clock.timed(policy, {k.decode(): v for k, v in obs.items()})

    print(_READY, flush=True)  # imports done; the bind is next, and REQ sockets queue until it
    serve(port, "seed", policy=infer)
    print(json.dumps({"infer_s": clock.infer_s, "batches": clock.batches, "rows": clock.rows}))


def _sim(
    port: int, task: str, num_envs: int, max_steps: int, action_dim: int, first: int,
    stride: int, total: int,
) -> None:  # fmt: skip
    from arena_eval.benchmarks.fleet_rollout import SeedClient, rollout
    from arena_eval.broker.spec import PolicySpec
    from arena_eval.sim_worker.envs import make_env

    spec = PolicySpec(name="affine-cost", action_shape=(1, action_dim))
    client = SeedClient(port, spec)
    with make_env(task, num_envs, max_steps=max_steps) as env:
        print(_READY, flush=True)
        sys.stdin.readline()
        figures_ = rollout(env, client, range(first, total, stride), task)
    client.close()
    print(json.dumps(figures_.as_dict()), flush=True)


if __name__ == "__main__":
    role, args = sys.argv[1], sys.argv[2:]
    if role == "server":
        _server(int(args[0]), args[1], args[2], args[3])
    else:
        p, task, *rest = args
        n, steps, dim, first, stride, total = (int(x) for x in rest)
        _sim(int(p), task, n, steps, dim, first, stride, total)
