"""openpi's side of ``arena-eval bench gateway``: its own server and its unmodified client.

Run with the Python of the openpi venv (``openpi_venv``), never arena-eval's:
it imports only openpi's PyPI packages, numpy and the standard library.

* ``python openpi_peer.py server PORT LATENCY_MS H A``: openpi's
  ``WebsocketPolicyServer`` (PyPI ``openpi-server``) serving a policy with a
  fixed forward-pass time -- the one-at-a-time baseline (openpi#717).
* ``python openpi_peer.py client PORT SECONDS START_AT PAYLOAD``:
  ``WebsocketClientPolicy`` wrapped in ``ActionChunkBroker``, stepping as fast
  as the server answers from wall-clock ``START_AT`` for ``SECONDS``; prints
  one JSON line: steps taken and each request's round trip in ms.
"""

import json
import sys
import time
from typing import Any

import numpy as np

PAYLOADS = ("small", "libero")


def observation(payload: str, step: int) -> dict[str, Any]:
    obs = {"observation/state": np.full(8, step, np.float32), "prompt": "pick up the bowl"}
    if payload == "libero":
        obs["observation/image"] = np.full((224, 224, 3), step % 255, np.uint8)
        obs["observation/wrist_image"] = np.full((224, 224, 3), step % 251, np.uint8)
    return obs


def serve(port: int, latency_ms: float, horizon: int, dim: int) -> None:
    from openpi_client import base_policy  # type: ignore[import-not-found]
    from openpi_server import WebsocketPolicyServer  # type: ignore[import-not-found]

    class FixedCost(base_policy.BasePolicy):  # type: ignore[misc]
        def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
            time.sleep(latency_ms / 1000.0)
            return {"actions": np.zeros((horizon, dim), np.float32)}

    meta = {"action_horizon": horizon, "action_dim": dim}
    WebsocketPolicyServer(FixedCost(), host="127.0.0.1", port=port, metadata=meta).serve_forever()


def client(port: int, seconds: float, start_at: float, payload: str) -> None:
    from openpi_client import action_chunk_broker, base_policy, websocket_client_policy  # type: ignore[import-not-found]

    remote = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
    times: list[float] = []

    class Timed(base_policy.BasePolicy):  # type: ignore[misc]
        """Times each request; the client's own classes do the rest, unmodified."""

        def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
            t0 = time.perf_counter()
            out = remote.infer(obs)
            times.append((time.perf_counter() - t0) * 1e3)
            return out  # type: ignore[no-any-return]

        def reset(self) -> None:
            remote.reset()

    horizon = int(remote.get_server_metadata()["action_horizon"])
    broker = action_chunk_broker.ActionChunkBroker(Timed(), action_horizon=horizon)
    frames = [observation(payload, i) for i in range(horizon)]
    broker.infer(frames[0])  # warm-up: connection and first request outside the window
    time.sleep(max(0.0, start_at - time.time()))
    broker.reset()
    times.clear()
    steps = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        broker.infer(frames[steps % horizon])
        steps += 1
    print(json.dumps({"steps": steps, "request_ms": times}))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        client(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
