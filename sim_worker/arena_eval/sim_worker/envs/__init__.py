"""Environment adapters: every simulator behind the small :class:`VectorEnv` interface.

The rollout loop only ever sees ``VectorEnv`` (batched numpy, dict observations, explicit
per-slot seeded resets, no autoreset), so adding a simulator means adding one adapter here and
one syntax to :func:`make_env`. Simulator packages (gymnasium, metaworld, torch) are imported
lazily by the adapters, so importing this package needs only numpy.
"""

from arena_eval.sim_worker.envs.base import ObsDict, ObsField, StepResult, VectorEnv
from arena_eval.sim_worker.envs.errors import MissingSimDependency, UnknownTask
from arena_eval.sim_worker.envs.factory import make_env
from arena_eval.sim_worker.envs.gym_env import GymVectorEnv
from arena_eval.sim_worker.envs.metaworld_env import ExpertPolicy, expert_policy_for
from arena_eval.sim_worker.envs.tensor_env import TensorEnv, TensorEnvAdapter

__all__ = [
    "ExpertPolicy",
    "GymVectorEnv",
    "MissingSimDependency",
    "ObsDict",
    "ObsField",
    "StepResult",
    "TensorEnv",
    "TensorEnvAdapter",
    "UnknownTask",
    "VectorEnv",
    "expert_policy_for",
    "make_env",
]
