"""Your own simulation loop, served by a remote model pool.

The shape of the seed's policy_runner: a vectorised env, a policy that hands
out one action per env from remotely computed action chunks, and metrics.
Start a pool first, then run this anywhere that reaches the same Redis:

    arena-eval policy serve --pool mw --policy metaworld-expert &
    python examples/remote_policy_loop.py --pool mw --task door-open-v3 --num-envs 4 --steps 400

Each row goes with its task and instruction, so one multi-task pool serves any
Meta-World task.
"""

import argparse

import gymnasium as gym
import metaworld  # noqa: F401  (registers the Meta-World envs)
import numpy as np

from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.client import PolicyClient

parser = argparse.ArgumentParser()
parser.add_argument("--pool", default="mw")
parser.add_argument("--task", default="door-open-v3")
parser.add_argument("--instruction", default="")
parser.add_argument("--num-envs", type=int, default=4)
parser.add_argument("--steps", type=int, default=400)
args = parser.parse_args()

n = args.num_envs
envs = gym.vector.SyncVectorEnv(
    [lambda: gym.make("Meta-World/MT1", env_name=args.task) for _ in range(n)],
    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
)
policy = ChunkedPolicy(
    PolicyClient(args.pool), num_envs=n, task=f"metaworld/{args.task}", instruction=args.instruction
)
obs, _ = envs.reset(seed=0)
episode, successes = np.arange(n), []
for _ in range(args.steps):
    actions = policy.act({"state": obs}, [f"ep{e}" for e in episode])
    obs, _reward, terminated, truncated, info = envs.step(actions)
    done = terminated | truncated | (info["success"] > 0)
    if done.any():
        successes += (info["success"][done] > 0).tolist()
        episode[done] = episode.max() + 1 + np.arange(done.sum())
        obs, _ = envs.reset(options={"reset_mask": done})
print(
    {
        "success_rate": float(np.mean(successes)) if successes else 0.0,
        "num_episodes": len(successes),
    }
)
