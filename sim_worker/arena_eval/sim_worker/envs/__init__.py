"""Environment adapters: every simulator behind the small :class:`VectorEnv` interface.

The rollout loop only ever sees ``VectorEnv`` (batched numpy, dict observations, explicit
per-slot seeded resets, no autoreset). Each simulator is one adapter module that defines an
:class:`EnvAdapter` (its task prefix and factory), listed by one line in the task table
(:mod:`.registry`: ``BUILTIN_ENVS``, or the ``arena_eval.envs`` entry-point group for other
packages); :func:`make_env` picks the adapter for a task string. Simulator packages
(gymnasium, metaworld, torch) are imported lazily by the adapters, so importing this package
needs only numpy.
"""

from arena_eval.sim_worker.envs.adapter import EnvAdapter, EnvOptions
from arena_eval.sim_worker.envs.base import ObsDict, StepResult, VectorEnv
from arena_eval.sim_worker.envs.errors import MissingSimDependency, UnknownTask
from arena_eval.sim_worker.envs.factory import make_env
from arena_eval.sim_worker.envs.gym_env import GymVectorEnv
from arena_eval.sim_worker.envs.registry import ENTRY_POINT_GROUP
from arena_eval.sim_worker.envs.tensor_env import TensorEnv, TensorEnvAdapter

__all__ = [
    "ENTRY_POINT_GROUP",
    "EnvAdapter",
    "EnvOptions",
    "GymVectorEnv",
    "MissingSimDependency",
    "ObsDict",
    "StepResult",
    "TensorEnv",
    "TensorEnvAdapter",
    "UnknownTask",
    "VectorEnv",
    "make_env",
]
