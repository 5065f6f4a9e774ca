"""Drive an openpi gateway with the real, unmodified openpi-client (run in the openpi venv).

``python openpi_client_script.py PORT SEED STEPS PROMPT START_AT`` prints one JSON
line: the server metadata, the action of every step (through
``ActionChunkBroker``), the reply keys of a direct ``infer``, and what
``/healthz`` and ``/readyz`` answered. Observations are LIBERO-shaped and a
function of (seed, step), so the test recomputes the expected actions. Every
client connects, then waits for the wall-clock START_AT, so several clients'
requests overlap however slowly their processes start. It
imports nothing of arena-eval: it is what an openpi user runs.
"""

import json
import sys
import time
import urllib.error
import urllib.request

import numpy as np
from openpi_client import action_chunk_broker, websocket_client_policy


def observation(seed: int, step: int, prompt: str) -> dict:
    return {
        "observation/image": np.full((8, 8, 3), (seed * 7 + step) % 200, np.uint8),
        # float64, as LIBERO's example builds it: the gateway casts to the spec's float32
        "observation/state": np.arange(8, dtype=np.float64) + seed + 0.25 * step,
        "prompt": prompt,
    }


def http_get(port: int, path: str) -> list:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return [resp.status, resp.read().decode()]
    except urllib.error.HTTPError as exc:
        return [exc.code, exc.read().decode()]


def main() -> None:
    port, seed, steps, prompt = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    policy = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
    time.sleep(max(0.0, float(sys.argv[5]) - time.time()))
    metadata = policy.get_server_metadata()
    horizon = metadata["action_horizon"]
    broker = action_chunk_broker.ActionChunkBroker(policy, action_horizon=horizon)
    actions = []
    for step in range(steps):
        out = broker.infer(observation(seed, step, prompt))
        actions.append(np.asarray(out["actions"]).tolist())
    direct = policy.infer(observation(seed, 0, prompt))
    result = {
        "metadata": {str(k): v for k, v in metadata.items() if not isinstance(v, np.ndarray)},
        "actions": actions,
        "direct_keys": sorted(direct),
        "direct_shape": list(np.asarray(direct["actions"]).shape),
        "direct_dtype": str(np.asarray(direct["actions"]).dtype),
        "server_timing": {k: float(v) for k, v in direct["server_timing"].items()},
        "policy_timing": {k: float(v) for k, v in direct["policy_timing"].items()},
        "healthz": http_get(port, "/healthz"),
        "readyz": http_get(port, "/readyz"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
