"""The one interface a model pool serves: ``Policy``, and what it is handed: ``Batch``.

Kept deliberately tiny (openpi-style): a policy declares what it accepts and
returns (``spec``), maps a batch of observations to a batch of action chunks
(``infer``), and may hear about episode boundaries (``reset``) and shutdown
(``close``).

Why a ``Batch`` and not a bare observation dict: the policies this fabric
serves are multi-task and language-conditioned, and one batch mixes rows of
many sims running different tasks. So every row carries its context -- the
episode id, its step in the episode, whether the episode just started, the
task name and the language instruction -- row-aligned with the observations.
A policy that needs none of it reads ``batch.obs`` and ignores the rest. This
replaces the seed's per-connection ``set_task_description``: context is per
row, so one pool serves many tasks in one forward pass.

Everything else -- batching rows from many sims, decoding, encoding,
retries -- belongs to the serve loop, so a new model family is one small
class and never a fork of the fabric.

Two rules that the serve loop relies on, stated here so that implementers see
them first:

* Input arrays may be READ-ONLY: they are decoded zero-copy from a network or
  shared-memory buffer. A policy must never write into them (copy first if the
  underlying code mutates its input, as Meta-World's scripted experts do).
* ``infer`` returns a fresh ``(B, H, A)`` array with ``(H, A) ==
  spec().action_shape`` and dtype ``spec().action_dtype``; ``B`` is the row
  count of the batch. ``check_actions`` verifies exactly that. It may instead
  return ``(actions, infos)``: ``infos`` is one dict per row (str keys; values
  the codec carries: numbers, strings, lists, small arrays), which the reply
  carries back to each row's sim (``PolicyClient.last_infos``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt

from arena_eval.broker.spec import PolicySpec, SpecMismatch

__all__ = [
    "ArgDoc",
    "Batch",
    "InferResult",
    "Infos",
    "Policy",
    "batch_rows",
    "check_actions",
    "split_result",
]

#: One info dict per row, as a policy may return them with its actions.
Infos: TypeAlias = Sequence[Mapping[str, Any]]
#: What ``Policy.infer`` returns: the actions, or the actions and one info dict per row.
InferResult: TypeAlias = np.ndarray | tuple[np.ndarray, Infos]


@dataclass(frozen=True)
class Batch:
    """``B`` rows: observations and, row-aligned, each row's context.

    ``obs``           ``{key: (B, ...)}``, possibly read-only (never write into it)
    ``episode_ids``   the episode each row belongs to (``"job:index"`` for jobs)
    ``steps``         int64 ``(B,)``: the row's step in its episode (0 = first observation)
    ``starts``        bool ``(B,)``: the episode (re)started with this row
    ``tasks``         the row's task name (``"metaworld/door-open-v3"``; ``""`` if unknown)
    ``instructions``  the row's language instruction (UTF-8; ``""`` if none)

    ``Batch.of(obs)`` fills the context with defaults (for tests and direct
    calls); the serve loop builds batches from requests with ``concat``.
    """

    obs: dict[str, np.ndarray]
    episode_ids: list[str]
    steps: npt.NDArray[np.int64]
    starts: npt.NDArray[np.bool_]
    tasks: list[str]
    instructions: list[str]

    @property
    def rows(self) -> int:
        return len(self.episode_ids)

    def __len__(self) -> int:
        return len(self.episode_ids)

    @classmethod
    def of(
        cls,
        obs: Mapping[str, np.ndarray],
        *,
        episode_ids: Sequence[str] | None = None,
        steps: npt.ArrayLike | None = None,
        starts: npt.ArrayLike | None = None,
        tasks: str | Sequence[str] = "",
        instructions: str | Sequence[str] = "",
    ) -> Batch:
        """A batch of ``obs`` with the given context; a str task/instruction applies to every row.

        Raises ``SpecMismatch`` when a context sequence is not one per row.
        """
        rows = batch_rows(obs)
        batch = cls(
            obs=dict(obs),
            episode_ids=[""] * rows if episode_ids is None else [str(e) for e in episode_ids],
            steps=np.zeros(rows, np.int64) if steps is None else np.asarray(steps, np.int64),
            starts=np.zeros(rows, np.bool_) if starts is None else np.asarray(starts, np.bool_),
            tasks=[tasks] * rows if isinstance(tasks, str) else list(tasks),
            instructions=(
                [instructions] * rows if isinstance(instructions, str) else list(instructions)
            ),
        )
        batch.check(rows)
        return batch

    def check(self, rows: int) -> None:
        """Raise ``SpecMismatch`` unless every context field has ``rows`` entries."""
        for name, n in (
            ("episode_ids", len(self.episode_ids)),
            ("steps", self.steps.shape[0] if self.steps.ndim == 1 else -1),
            ("starts", self.starts.shape[0] if self.starts.ndim == 1 else -1),
            ("tasks", len(self.tasks)),
            ("instructions", len(self.instructions)),
        ):
            if n != rows:
                raise SpecMismatch(f"batch has {rows} observation rows but {n} {name}")

    def slice(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` (views of the arrays, no copy)."""
        return Batch(
            obs={k: v[start:stop] for k, v in self.obs.items()},
            episode_ids=self.episode_ids[start:stop],
            steps=self.steps[start:stop],
            starts=self.starts[start:stop],
            tasks=self.tasks[start:stop],
            instructions=self.instructions[start:stop],
        )

    @classmethod
    def concat(cls, batches: Sequence[Batch]) -> Batch:
        """The rows of ``batches`` one after the other (one batch is returned as it is)."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0]
        return cls(
            obs={k: np.concatenate([b.obs[k] for b in batches]) for k in first.obs},
            episode_ids=[e for b in batches for e in b.episode_ids],
            steps=np.concatenate([b.steps for b in batches]),
            starts=np.concatenate([b.starts for b in batches]),
            tasks=[t for b in batches for t in b.tasks],
            instructions=[t for b in batches for t in b.instructions],
        )


class ArgDoc(NamedTuple):
    """One constructor argument as ``arena-eval policy describe`` shows it.

    ``type`` says what the ``--policy-arg`` text must look like (``"int >= 1"``,
    ``"HxA shape"``); the name and default come from the signature.
    """

    type: str
    help: str


class Policy(ABC):
    """A batched policy: a ``Batch`` of ``B`` rows -> actions ``(B, H, A)``.

    Constructors take keyword arguments only (strings when they come from the
    CLI's ``--policy-arg k=v``); each policy parses its own types and raises
    ``ConfigError`` naming the bad argument. Instances are used from one
    thread at a time. ``ARGS`` documents the arguments for
    ``arena-eval policy describe``.
    """

    ARGS: ClassVar[Mapping[str, ArgDoc]] = {}

    @abstractmethod
    def spec(self) -> PolicySpec:
        """What this policy accepts and returns; constant over its lifetime."""

    @abstractmethod
    def infer(self, batch: Batch) -> InferResult:
        """Map one batch of rows to action chunks.

        ``batch.obs`` values share the leading (row) dimension and may be
        read-only; ``batch.tasks``, ``batch.instructions`` ... are row-aligned
        with them. Returns a new array of shape ``(B, H, A)`` where ``(H, A)``
        is ``spec().action_shape`` and dtype is ``spec().action_dtype`` -- or
        ``(actions, infos)`` with one info dict per row.
        """

    def reset(self, episode_ids: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """Episodes with these ids (re)started; stateful policies drop their state.

        The default does nothing: most policies are stateless per request.
        """

    def identity_params(self) -> Mapping[str, str] | None:
        """The arguments that make this policy answer as it does, as text.

        Part of the pool's identity check (``PolicySpec.policy``): a worker
        whose identity differs from the live pool's is refused. Leave out
        runtime-only arguments (device, threads), so workers on different
        devices can share a pool; name a checkpoint by its content hash, not
        its path. The default ``None`` means "every argument it was built
        with" (``policy_worker.identity``).
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release models, device memory, file handles. Default: nothing to release."""

    def __enter__(self) -> Policy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def batch_rows(batch: Mapping[str, np.ndarray]) -> int:
    """Row count of a batch: the leading dimension of its first array.

    Cheap on purpose (no per-key checks): the serve loop validates batches
    against the spec before they reach a policy.
    """
    for value in batch.values():
        shape = getattr(value, "shape", ())
        if not shape:
            raise SpecMismatch("observation arrays need a leading batch dimension")
        return int(shape[0])
    raise SpecMismatch("observation batch is empty: expected at least one array")


def split_result(result: InferResult, rows: int) -> tuple[object, list[dict[str, Any]] | None]:
    """``infer``'s return value as (actions, infos or None); infos checked to be one dict per row.

    The actions are returned unchecked (``check_actions`` or the serve loop's
    shape check names a wrong shape).
    """
    if not isinstance(result, tuple):
        return result, None
    if len(result) != 2:
        raise SpecMismatch(
            f"infer returned a tuple of {len(result)} items; expected actions or (actions, infos)"
        )
    actions, infos = result
    if isinstance(infos, (str, bytes, Mapping)) or not isinstance(infos, Sequence):
        raise SpecMismatch(f"infer's infos must be a list of dicts, got {type(infos).__name__}")
    if len(infos) != rows:
        raise SpecMismatch(f"infer returned {len(infos)} info dicts for {rows} rows")
    out: list[dict[str, Any]] = []
    for info in infos:
        if not isinstance(info, Mapping):
            raise SpecMismatch(f"infer's infos must be dicts, got a {type(info).__name__}")
        out.append(dict(info))
    return actions, out


def check_actions(spec: PolicySpec, actions: object, rows: int) -> np.ndarray:
    """Return ``actions`` if it is a ``(rows, H, A)`` array of the spec's dtype, else raise.

    Raises ``SpecMismatch`` with both the expected and the actual shape/dtype,
    so that a model that disagrees with its own spec fails loudly at load or
    on the first request instead of confusing a sim.
    """
    expected = (rows, *spec.action_shape)
    if not isinstance(actions, np.ndarray):
        raise SpecMismatch(
            f"policy {spec.name!r} returned a {type(actions).__name__}, expected a numpy "
            f"array of shape {list(expected)}"
        )
    dtype = np.dtype(spec.action_dtype)
    if actions.shape != expected or actions.dtype != dtype:
        raise SpecMismatch(
            f"policy {spec.name!r} returned {actions.dtype.name}{list(actions.shape)}, "
            f"expected {dtype.name}{list(expected)} (rows, H, A)"
        )
    return actions
