"""Errors raised while building or driving an environment, and the optional-import helper.

They subclass ``ConfigError`` because every one of them means "the task string or the
installation is wrong", which the CLI reports the same way: print the message, exit non-zero.
Simulator packages are optional (a policy node never needs them), so they are imported on
first use through :func:`require`, which turns a missing package into an actionable message
instead of a bare ``ModuleNotFoundError`` deep inside a worker.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from arena_eval.broker.errors import ConfigError


class UnknownTask(ConfigError):
    """The task string matches no adapter, or names a task its simulator does not have."""


class MissingSimDependency(ConfigError):
    """A simulator package the task needs is not installed."""


class GLUnavailable(ConfigError):
    """A camera needs OpenGL (or ``MUJOCO_GL`` names a backend) whose system library won't load."""


_INSTALL_HINT = {
    "gymnasium": "pip install 'arena-eval[sim]'",
    "metaworld": "pip install 'arena-eval[sim]'",
    "mujoco": "pip install 'arena-eval[sim]'",
    "torch": "pip install torch (or pip install 'arena-eval[policy]')",
}


def require(module: str, *, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingSimDependency` naming the install command."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".", 1)[0]
        if exc.name is not None and exc.name.split(".", 1)[0] != top:
            raise  # the package is there but one of *its* imports is broken: show that
        hint = _INSTALL_HINT.get(top, f"pip install {top}")
        raise MissingSimDependency(
            f"{purpose} needs the '{top}' package, which is not installed: {hint}"
        ) from exc


def unknown_task(task: str, reason: str = "") -> UnknownTask:
    """The standard 'unknown task' error; ``make_env`` appends every registered task syntax
    (adapters know why a task is unknown, only the task table knows the syntaxes)."""
    detail = f": {reason}" if reason else ""
    return UnknownTask(f"unknown task {task!r}{detail}")
