"""The one interface a model pool serves: ``Policy``.

Kept deliberately tiny (openpi-style): a policy declares what it accepts and
returns (``spec``), maps a batch of observations to a batch of action chunks
(``infer``), and may hear about episode boundaries (``reset``) and shutdown
(``close``). Everything else -- batching rows from many sims, decoding,
encoding, retries -- belongs to the serve loop, so a new model family is one
small class and never a fork of the fabric.

Two rules that the serve loop relies on, stated here so that implementers see
them first:

* Input arrays may be READ-ONLY: they are decoded zero-copy from a network or
  shared-memory buffer. A policy must never write into them (copy first if the
  underlying code mutates its input, as Meta-World's scripted experts do).
* ``infer`` returns a fresh ``(B, H, A)`` array with ``(H, A) ==
  spec().action_shape`` and dtype ``spec().action_dtype``; ``B`` is the row
  count of the batch. ``check_actions`` verifies exactly that.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import ClassVar, NamedTuple

import numpy as np

from arena_eval.broker.spec import PolicySpec, SpecMismatch

__all__ = ["ArgDoc", "Policy", "batch_rows", "check_actions"]


class ArgDoc(NamedTuple):
    """One constructor argument as ``arena-eval policy describe`` shows it.

    ``type`` says what the ``--policy-arg`` text must look like (``"int >= 1"``,
    ``"HxA shape"``); the name and default come from the signature.
    """

    type: str
    help: str


class Policy(ABC):
    """A batched policy: observations ``{key: (B, ...)}`` -> actions ``(B, H, A)``.

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
    def infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Map one batch of observations to action chunks.

        ``batch`` values share the leading (row) dimension and may be
        read-only. Returns a new array of shape ``(B, H, A)`` where ``(H, A)``
        is ``spec().action_shape`` and dtype is ``spec().action_dtype``.
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
