"""Named benchmark suites (``metaworld/mt10``, ``metaworld/mt50``) and each task's instruction.

Why here: a suite is a list of tasks of one simulator and an instruction per task is that
simulator's data, so both live with the env adapters. ``arena-eval submit --suite`` expands
a suite name into the job's task list (the job stores the tasks, not the name's meaning, so
a job's spec says exactly what ran); the sim worker asks :func:`instruction_for` for the
instruction of the task of each unit it runs and sends it with every policy row.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from arena_eval.broker.errors import ArenaEvalError, ConfigError
from arena_eval.sim_worker.envs.metaworld_tasks import MT10, MT50
from arena_eval.sim_worker.envs.registry import env_table

#: Suite name -> its tasks (full task strings), in the benchmark's order.
SUITES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "metaworld/mt10": tuple(f"metaworld/{t}" for t in MT10),
        "metaworld/mt50": tuple(f"metaworld/{t}" for t in MT50),
    }
)


def suite_tasks(name: str) -> tuple[str, ...]:
    """The tasks of suite ``name``; ConfigError naming the known suites otherwise."""
    try:
        return SUITES[name]
    except KeyError:
        raise ConfigError(
            f"unknown suite {name!r}; known suites: {', '.join(SUITES)} "
            "(or give tasks with a repeated --task)"
        ) from None


def instruction_for(task: str) -> str:
    """The language instruction of ``task`` from its env adapter, or '' if it has none."""
    try:
        adapter, name = env_table().find(task)
    except ArenaEvalError:
        return ""
    return adapter.instruction(name) if adapter.instruction is not None else ""
