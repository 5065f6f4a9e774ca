"""Meta-World's scripted experts behind the ``Policy`` interface (``metaworld-expert``).

Why: a policy that really *succeeds* is the only end-to-end check that the
sim -> broker -> pool -> sim loop delivers each action to the right episode at
the right step; zeros or noise would "work" with rows scrambled. The experts
are closed-loop controllers (they look at the current state every step), so
the natural chunk length is 1; ``chunk`` repeats the action to test chunked
action paths. It is multi-task: each row is answered by the expert of the
row's own task (``Batch.tasks``), so one pool serves a whole MT10/MT50 suite
and a batch may mix tasks from many sims.

The expert class is looked up by task name in ``metaworld.policies`` itself
(its ``ENV_POLICY_MAP``, then the ``Sawyer<CamelTask>V<n>Policy`` naming
convention), never through ``sim_worker``: the two worker packages do not
import each other. Meta-World is imported only when this policy is built.
"""

from __future__ import annotations

import importlib
import re
import warnings
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.spec import FieldSpec, PolicySpec, SpecMismatch
from arena_eval.policy_worker.builtins.args import parse_int
from arena_eval.policy_worker.policy import ArgDoc, Batch, Policy

__all__ = ["OBS_DIM", "OBS_KEY", "MetaWorldExpertPolicy", "expert_policy_class", "normalize_task"]

OBS_KEY = "state"
OBS_DIM = 39
ACTION_DIM = 4
_INSTALL_HINT = "pip install 'arena-eval[sim]'"
_PREFIX = re.compile(r"^(meta-?world)[/:]", re.IGNORECASE)


class _Expert(Protocol):
    def get_action(self, obs: np.ndarray) -> Any: ...


def normalize_task(task: str) -> str:
    """``'metaworld/door-open-v3'`` or ``'Meta-World/door-open-v3'`` -> ``'door-open-v3'``."""
    return _PREFIX.sub("", task.strip())


def _import_policies() -> Any:
    try:
        return importlib.import_module("metaworld.policies")
    except ImportError as exc:
        raise ConfigError(
            f"the 'metaworld-expert' policy needs Meta-World, which could not be imported "
            f"({exc}); install it with: {_INSTALL_HINT}"
        ) from exc


def _class_name(task: str) -> str | None:
    match = re.fullmatch(r"([a-z0-9-]+)-v(\d+)", task)
    if match is None:
        return None
    camel = "".join(part.capitalize() for part in match.group(1).split("-") if part)
    return f"Sawyer{camel}V{match.group(2)}Policy"


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def expert_policy_class(task: str) -> type[Any]:
    """The scripted expert class for a Meta-World task name, e.g. ``'door-open-v3'``.

    Looks in ``metaworld.policies.ENV_POLICY_MAP`` first (it knows irregular
    names such as ``peg-insert-side-v3`` -> ``SawyerPegInsertionSideV3Policy``),
    then derives ``Sawyer<CamelCase>V<n>Policy`` from the name, then compares
    names with separators removed. Raises ``ConfigError`` listing known tasks.
    """
    policies = _import_policies()
    name = normalize_task(task)
    known = getattr(policies, "ENV_POLICY_MAP", None)
    if isinstance(known, Mapping) and name in known:
        return known[name]  # type: ignore[no-any-return]
    candidates = {
        attr: obj
        for attr in dir(policies)
        if attr.startswith("Sawyer") and attr.endswith("Policy")
        for obj in (getattr(policies, attr),)
        if isinstance(obj, type)
    }
    derived = _class_name(name.lower())
    if derived is not None and derived in candidates:
        return candidates[derived]
    wanted = _squash(f"sawyer{name}policy")
    for attr, obj in candidates.items():
        if _squash(attr) == wanted:
            return obj
    tasks = sorted(known) if isinstance(known, Mapping) else sorted(candidates)
    raise ConfigError(
        f"task: no Meta-World scripted expert for {task!r}; expected a task name such as "
        f"'door-open-v3' (known: {', '.join(tasks)})"
    )


class MetaWorldExpertPolicy(Policy):
    """Meta-World scripted experts, dispatched on each row's task; deterministic, stateless.

    Arguments: ``task`` (optional): one task (``'door-open-v3'`` or
    ``'metaworld/door-open-v3'``) or a comma-separated list; without it the
    policy serves every task Meta-World has an expert for (MT50), so one pool
    serves a whole suite. ``chunk`` (default 1: repeat the action H times).
    Spec: observations ``{"state": float64 (39,)}``, action shape
    ``(chunk, 4)``, float32, and the tasks it serves, so a job for another
    task fails with the reason.

    Each row is answered by the expert of ``batch.tasks[row]``; a row with no
    task is allowed only when the policy serves exactly one. ``infer`` loops
    over rows (the experts are per-observation Python code) and hands each one
    a private float64 copy: the experts write into slices of their input, and
    batch arrays may be read-only views of a wire buffer.
    """

    ARGS = {
        "task": ArgDoc(
            "Meta-World task[,task...]",
            "Serve only these tasks, e.g. door-open-v3 (default: every task with an expert).",
        ),
        "chunk": ArgDoc("int >= 1", "Chunk length H: the action is repeated H times."),
    }

    def __init__(self, task: str = "", chunk: str | int = 1) -> None:
        wanted = [normalize_task(t) for t in str(task).split(",") if t.strip()]
        if wanted:
            classes = {t: expert_policy_class(t) for t in dict.fromkeys(wanted)}
        else:
            classes = {t: expert_policy_class(t) for t in sorted(_known_tasks())}
        self._classes = classes
        self._restricted = bool(wanted)
        self._experts: dict[str, _Expert] = {}
        # rows name tasks with or without the family prefix, in any case
        self._lookup = {t.lower(): t for t in classes}
        self._chunk = parse_int(chunk, "chunk", minimum=1)
        only = next(iter(classes)) if len(classes) == 1 else None
        self._only = only
        extra = {"expert": classes[only].__name__} if only else {"experts": len(classes)}
        self._spec = PolicySpec(
            name=f"metaworld-expert/{only}" if only else "metaworld-expert",
            action_shape=(self._chunk, ACTION_DIM),
            observations={OBS_KEY: FieldSpec("float64", (OBS_DIM,))},
            action_dtype="float32",
            extra=extra,
            tasks=tuple(f"metaworld/{t}" for t in classes),
        )
        # The experts' move() warns whenever a gain saturates ("Constant(s) may be
        # too high"), i.e. on most steps; the env clips actions to [-1, 1] anyway.
        warnings.filterwarnings(
            "ignore",
            message=r"Constant\(s\) may be too high",
            category=UserWarning,
            module=r"metaworld\.policies",
        )

    @property
    def task(self) -> str:
        """The one task served, or ``""`` when it serves several."""
        return self._only or ""

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def spec(self) -> PolicySpec:
        return self._spec

    def identity_params(self) -> dict[str, str]:
        return {"task": ",".join(self._classes) if self._restricted else "*",
                "chunk": str(self._chunk)}  # fmt: skip

    def infer(self, batch: Batch) -> np.ndarray:
        try:
            states = batch.obs[OBS_KEY]
        except KeyError:
            raise SpecMismatch(
                f"metaworld-expert needs observation {OBS_KEY!r} (float64[{OBS_DIM}]); "
                f"got keys {sorted(batch.obs)}"
            ) from None
        experts = {name: self._expert_for(name) for name in set(batch.tasks)}
        out = np.empty((batch.rows, self._chunk, ACTION_DIM), dtype=np.float32)
        for i, name in enumerate(batch.tasks):
            row = np.array(states[i], dtype=np.float64, copy=True)
            out[i, :, :] = np.asarray(experts[name].get_action(row), dtype=np.float32)
        return out

    def _expert_for(self, row_task: str) -> _Expert:
        """The expert for a row's task name (built once per task), or SpecMismatch."""
        if not row_task and self._only is not None:
            name: str | None = self._only
        else:
            name = self._lookup.get(normalize_task(row_task).lower())
        if name is None:
            if not row_task:
                raise SpecMismatch(
                    "a row carries no task, and metaworld-expert serves several: send each "
                    "row's task (the sim does: PolicyClient.infer(..., tasks=...))"
                )
            raise SpecMismatch(
                f"metaworld-expert does not serve task {row_task!r}; it serves "
                f"{self._spec.describe_tasks()}"
            )
        expert = self._experts.get(name)
        if expert is None:
            expert = self._experts[name] = self._classes[name]()
        return expert


def _known_tasks() -> list[str]:
    """Every task with a scripted expert (``ENV_POLICY_MAP``'s keys)."""
    known = getattr(_import_policies(), "ENV_POLICY_MAP", None)
    if not isinstance(known, Mapping) or not known:
        raise ConfigError(
            "metaworld-expert: this Meta-World has no ENV_POLICY_MAP; name the tasks with task=..."
        )
    return [str(t) for t in known]
