"""A PolicyClient in its own process, for the multi-process pool tests.

Usage: python tests/client_script.py POOL CLIENT_INDEX REQUESTS ROWS

Each request carries rows unique to this client and request; every answer is
checked row by row. Prints one JSON line with the counts; exits 1 on any
wrong answer.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from arena_eval.broker.settings import RedisSettings
from arena_eval.sim_worker.client import PolicyClient
from tests.policies_for_tests import DIM, expected_actions


def main() -> int:
    pool, index, requests, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    wrong = 0
    with PolicyClient(pool, RedisSettings.from_env(), timeout_s=30) as client:
        for i in range(requests):
            base = index * 100_000 + i * 100
            x = base + np.arange(rows * DIM, dtype=np.float32).reshape(rows, DIM)
            actions = client.infer({"x": x}, [f"c{index}-e{r}" for r in range(rows)], steps=i)
            if not np.array_equal(actions, expected_actions(x)):
                wrong += 1
        print(
            json.dumps(
                {
                    "client": index,
                    "requests": requests,
                    "wrong": wrong,
                    "duplicates": client.duplicates_dropped,
                    "sent": client.requests_sent,
                }
            )
        )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
