"""What an environment adapter registers: its task prefix, its factory and its syntax line.

Why a small record: the task table (:mod:`.registry`) only needs to know which task strings an
adapter takes, how to build it, and how to describe its syntax in an "unknown task" message;
everything else is the adapter's own business. So a new simulator is one module that defines
an :class:`EnvAdapter` (importing its simulator lazily, inside the factory) plus one line: in
``registry.BUILTIN_ENVS`` for arena-eval's own, or in a package's
``[project.entry-points."arena_eval.envs"]`` table for anyone else's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from arena_eval.sim_worker.envs.base import VectorEnv


@dataclass(frozen=True)
class EnvOptions:
    """The job's env knobs, handed to every factory; ``make_env`` has checked their ranges.

    ``seed`` seeds the reset each slot gets at construction (slot ``i`` with ``seed + i``);
    ``max_steps`` truncates episodes (None: the env's own limit); ``camera``/``image_size``
    ask for rendered frames (an adapter that has no cameras refuses a camera);
    ``vectorization`` is ``sync`` or ``async`` for adapters that vectorise single envs.
    """

    seed: int = 0
    max_steps: int | None = None
    camera: str | None = None
    image_size: int = 224
    vectorization: str = "sync"


#: ``factory(name, num_envs, options)``: ``name`` is the task string without the prefix.
EnvFactory = Callable[[str, int, EnvOptions], VectorEnv]


@dataclass(frozen=True)
class EnvAdapter:
    """One simulator's entry in the task table.

    ``prefix`` selects the adapter (``"metaworld/"``, ``"py:"``; the longest matching prefix
    wins). ``syntax`` is its line in the "unknown task" message. ``claims_bare``, if given,
    is asked about a task that matches no prefix (gymnasium claims the ids it has
    registered, e.g. ``CartPole-v1``); the factory then gets the whole task as ``name``.
    ``instruction``, if given, maps a task ``name`` to its language instruction ('' if it has
    none): the sim sends it with every policy row (``suites.instruction_for``).
    """

    prefix: str
    make: EnvFactory
    syntax: str
    claims_bare: Callable[[str], bool] | None = None
    instruction: Callable[[str], str] | None = None
