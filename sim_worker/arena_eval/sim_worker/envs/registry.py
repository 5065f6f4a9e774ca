"""The task table: which adapter builds a task string, found the way policies are found.

Why a table and not an if-chain: people evaluate on their own simulators, and they should not
have to fork arena-eval (and edit four files) to do it. An adapter is an
:class:`~.adapter.EnvAdapter` found, in this order, in

1. the built-in map below (name -> ``module:attr``; the modules import their simulators lazily,
   so loading the table needs only numpy), then
2. the ``arena_eval.envs`` entry-point group of every installed distribution (a third-party
   package declares ``[project.entry-points."arena_eval.envs"] isaac = "pkg.mod:ADAPTER"``).

A task goes to the adapter with the longest prefix it starts with; a task with no matching
prefix goes to the first adapter whose ``claims_bare`` accepts it. Two adapters with the same
prefix are refused by name rather than one silently shadowing the other. An entry point that
fails to load does not break the other tasks: it is named in the "unknown task" message.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

from arena_eval.broker.errors import ConfigError
from arena_eval.sim_worker.envs.adapter import EnvAdapter
from arena_eval.sim_worker.envs.errors import unknown_task

ENTRY_POINT_GROUP = "arena_eval.envs"

#: Built-in adapters: name -> ``module:attr`` of an ``EnvAdapter``. Order = order in messages.
BUILTIN_ENVS: Mapping[str, str] = {
    "metaworld": "arena_eval.sim_worker.envs.metaworld_env:ADAPTER",
    "pusht": "arena_eval.sim_worker.envs.pusht_env:ADAPTER",
    "gym": "arena_eval.sim_worker.envs.gym_env:ADAPTER",
    "py": "arena_eval.sim_worker.envs.tensor_env:ADAPTER",
}


@dataclass(frozen=True)
class Registered:
    """An adapter and where it came from (``'gym (built-in)'``, ``'isaac (entry point ...)'``)."""

    adapter: EnvAdapter
    source: str


@dataclass(frozen=True)
class EnvTable:
    """Every adapter that loaded, and a line per entry point that did not."""

    adapters: tuple[Registered, ...]
    broken: tuple[str, ...]

    def syntaxes(self) -> str:
        """The syntax lines of every adapter, for an "unknown task" message."""
        return ", ".join(r.adapter.syntax for r in self.adapters)

    def find(self, task: str) -> tuple[EnvAdapter, str]:
        """``(adapter, name)`` for ``task`` (``name``: without the prefix), else UnknownTask
        (which ``make_env`` completes with :meth:`syntaxes`)."""
        matches = [r for r in self.adapters if task.startswith(r.adapter.prefix)]
        if matches:
            longest = max(len(r.adapter.prefix) for r in matches)
            best = [r for r in matches if len(r.adapter.prefix) == longest]
            if len(best) > 1:
                raise ConfigError(
                    f"task prefix {best[0].adapter.prefix!r} is registered by more than one "
                    f"env adapter ({'; '.join(r.source for r in best)}); uninstall one of them"
                )
            return best[0].adapter, task[longest:]
        for r in self.adapters:
            if r.adapter.claims_bare is not None and r.adapter.claims_bare(task):
                return r.adapter, task
        reason = ""
        if self.broken:
            reason = f"no adapter takes it (not loaded: {'; '.join(self.broken)})"
        raise unknown_task(task, reason)


def env_table() -> EnvTable:
    """The built-in adapters, then every ``arena_eval.envs`` entry point (by name)."""
    found = [Registered(_builtin(target), f"{name} (built-in)") for name, target in
             BUILTIN_ENVS.items()]  # fmt: skip
    broken: list[str] = []
    builtin_targets = {t.replace(" ", "") for t in BUILTIN_ENVS.values()}
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.value.replace(" ", "") in builtin_targets:
            continue  # our own adapter, registered as an entry point too
        source = f"{ep.name} (entry point {ep.value} from {_dist_name(ep)})"
        try:
            adapter = ep.load()
        except Exception as exc:  # a third-party import can raise anything
            broken.append(f"{source}: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(adapter, EnvAdapter):
            broken.append(f"{source}: a {type(adapter).__name__}, not an EnvAdapter")
            continue
        found.append(Registered(adapter, source))
    return EnvTable(tuple(found), tuple(broken))


def _builtin(target: str) -> EnvAdapter:
    module, _, attr = target.partition(":")
    adapter = getattr(importlib.import_module(module), attr)
    assert isinstance(adapter, EnvAdapter), target
    return adapter


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None or dist.metadata is None:
        return "?"
    return f"{dist.metadata['Name'] or '?'} {dist.version}"
