"""One finished episode's result: the schema the rollout writes, the store keeps, metrics read.

Why one type: the rollout built dicts, the result store checked dicts with its own rules, and
the metrics and the CLI read dict keys, so a field renamed in one place went silently missing
in the others. :class:`EpisodeResult` is that schema, checked when built, and its stored form
is encoded and decoded here and nowhere else.

Stored form: one JSON object per episode, the value under its index in ``keys.job_results``
(JSON, not msgpack, so ``redis-cli HGET`` shows it as it is; NaN and inf become ``null``)::

    {"index": 7, "seed": 107, "success": true, "return": 412.5, "length": 93,
     "metrics": {"near_object": 1.0, "max_near_object": 1.0, ...},
     "worker": "host-123-ab12cd", "wall_s": 0.41, "finished_at": 1732123456.7,
     "task": "metaworld/door-open-v3", "task_episode": 7}

``task`` names the task the episode ran and ``task_episode`` its index within that task (a
suite job stores task ``k``'s episode ``i`` under index ``k * episodes + i``; a single-task
job has ``task_episode == index``). Rows stored before tasks were recorded have neither:
they decode with ``task == ""`` and ``task_episode is None``, and readers take the job's
single task and the index (``results.per_task`` does).

``metrics`` holds, per task metric the env reports each step, the *final* value under its
own name and the episode's *maximum* under ``max_<name>`` (e.g. Meta-World's
``grasp_success``: grasping at the end vs. ever grasped); NaN and never-reported values are
``null``. Only ``index`` and ``length`` are required; anything anyone may have written with
redis-cli is checked by :meth:`EpisodeResult.decode` before it is believed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def finite(value: float) -> float | None:
    """``value`` as a float, or None if NaN/inf (JSON has no NaN)."""
    v = float(value)
    return v if math.isfinite(v) else None


class BadEpisode(ValueError):
    """A stored value is not an episode result; the message says why (for a warning)."""


@dataclass(frozen=True)
class EpisodeResult:
    """One finished episode, as stored (``return_`` is stored as ``"return"``)."""

    index: int
    length: int
    success: bool = False
    seed: int | None = None
    return_: float | None = None
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    worker: str | None = None
    wall_s: float | None = None
    finished_at: float | None = None
    task: str = ""
    task_episode: int | None = None

    def __post_init__(self) -> None:
        problem = _problem(self.to_dict())
        if problem:
            raise BadEpisode(problem)

    def to_dict(self) -> dict[str, Any]:
        """The stored form as a dict (JSON-ready: what ``results --json`` prints per episode)."""
        return {
            "index": self.index,
            "seed": self.seed,
            "success": self.success,
            "return": self.return_,
            "length": self.length,
            "metrics": dict(self.metrics),
            "worker": self.worker,
            "wall_s": self.wall_s,
            "finished_at": self.finished_at,
            "task": self.task,
            "task_episode": self.task_episode,
        }

    def encode(self) -> str:
        """The stored JSON (keys sorted, so equal results are equal strings)."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> EpisodeResult:
        """An episode from its stored form; :class:`BadEpisode` says why ``data`` is not one."""
        problem = _problem(data)
        if problem:
            raise BadEpisode(problem)
        return cls(
            index=data["index"],
            length=data["length"],
            success=data.get("success", False),
            seed=data.get("seed"),
            return_=data.get("return"),
            metrics=data.get("metrics") or {},
            worker=data.get("worker"),
            wall_s=data.get("wall_s"),
            finished_at=data.get("finished_at"),
            task=data.get("task") or "",
            task_episode=data.get("task_episode"),
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> EpisodeResult:
        """An episode from its stored JSON; :class:`BadEpisode` says why ``raw`` is not one."""
        try:
            data = json.loads(raw)
        except ValueError:
            raise BadEpisode("not valid JSON") from None
        return cls.from_dict(data)


def _problem(episode: Any) -> str:
    """Why ``episode`` is not a stored result as documented above ('' if it is one)."""
    if not isinstance(episode, dict):
        return "not a JSON object"
    if not _is_int(episode.get("index")) or episode["index"] < 0:
        return "'index' is not a non-negative integer"
    if not _is_number(episode.get("length")):
        return "'length' is not a number"
    for name in ("return", "seed", "wall_s", "finished_at"):
        if episode.get(name) is not None and not _is_number(episode[name]):
            return f"{name!r} is not a number"
    if not isinstance(episode.get("success", False), bool):
        return "'success' is not true or false"
    for name in ("worker", "task"):
        if episode.get(name) is not None and not isinstance(episode[name], str):
            return f"{name!r} is not a string"
    te = episode.get("task_episode")
    if te is not None and not (_is_int(te) and te >= 0):
        return "'task_episode' is not a non-negative integer"
    metrics = episode.get("metrics")
    if metrics is not None and not (
        isinstance(metrics, dict) and all(v is None or _is_number(v) for v in metrics.values())
    ):
        return "'metrics' is not an object of numbers"
    return ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
