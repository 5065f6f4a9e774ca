"""The seed's server shape with a FixedLatencyPolicy: one REP socket, one request at a time.

``python -m arena_eval.bench.zmq_baseline_policy PORT LATENCY_MS``
"""

from __future__ import annotations

import sys

import numpy as np

from arena_eval.bench.policies import FixedLatencyPolicy
from arena_eval.bench.zmq_baseline import pack, unpack


def serve(port: int, latency_ms: float) -> None:
    import zmq

    policy = FixedLatencyPolicy(latency_ms)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(f"tcp://127.0.0.1:{port}")
    while True:
        frame = sock.recv(copy=False)
        if frame.bytes[:4] == b"stop":
            sock.send(b"bye")
            continue  # several clients each say stop; the parent terminates us
        request = unpack(frame.buffer, "seed")
        actions = policy.infer(dict(request[b"obs"].items()))
        sock.send(pack({b"actions": np.asarray(actions)}, "seed"), copy=False)


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]))
