"""The seed's server shape with a FixedLatencyPolicy: one REP socket, one request at a time.

``python -m arena_eval.benchmarks.zmq_baseline_policy PORT LATENCY_MS``
"""

from __future__ import annotations

import sys

from arena_eval.benchmarks.policies import FixedLatencyPolicy
from arena_eval.benchmarks.zmq_baseline import serve
from arena_eval.policy_worker.policy import Batch

if __name__ == "__main__":
    policy = FixedLatencyPolicy(sys.argv[2])
    serve(
        int(sys.argv[1]),
        "seed",
        policy=lambda obs: policy.infer(Batch.of({k.decode(): v for k, v in obs.items()})),
    )
