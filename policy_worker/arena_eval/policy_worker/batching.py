"""The row cap: ``max_batch`` bounds the rows of every ``policy.infer`` call; the Batcher protocol.

Why rows and not requests: a model's memory is sized for a number of rows
(the CLI's help says "most rows per forward pass"), and one request may carry
many (a sim with 24 envs sends 24). Counting requests let 8 requests of 3
rows become a 24-row forward pass. Two rules keep the cap exact and fair:

* ``take_rows`` fills a batch in arrival order and stops at the first request
  that would not fit; it and everything after it wait, first in line, for the
  next batch (nothing is skipped over, dropped or reordered).
* ``infer_capped`` runs a batch larger than the cap -- only ever one request
  on its own -- as consecutive calls of at most ``max_batch`` rows and
  concatenates the outputs. Splitting rather than refusing: the sim asked for
  something legal, and rows are independent as far as the serve loop knows
  (a policy that couples rows within a call could not be batched across sims
  either).

``Batcher`` is what the serve loop asks of a batching policy (the default is
``batcher.WindowBatcher``); it lives here, beside the cap every policy keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import numpy as np

from arena_eval.policy_worker.entries import Pending, rows
from arena_eval.policy_worker.policy import Batch, InferResult, split_result

__all__ = ["Batcher", "ReadMore", "infer_capped", "read_count", "take_rows", "total_rows"]

ReadMore = Callable[[int], list[Pending]]


class Batcher(Protocol):
    """A batching policy (``batcher.py``); ``max_batch`` is the row cap it must respect."""

    max_batch: int

    def read_count(self, rows_in_hand: int) -> int:
        """How many entries the next read should ask for, with ``rows_in_hand`` rows held."""
        ...

    def gather(
        self, items: list[Pending], read_more: ReadMore, stopping: Callable[[], bool]
    ) -> list[Pending]:
        """Grow ``items`` (never empty) into one batch's candidates; ``read_more(count)``
        reads without blocking. Return them in arrival order (``take`` cuts them)."""
        ...

    def take(self, items: list[Pending]) -> tuple[list[Pending], list[Pending]]:
        """Split candidates into (this batch, the rest): the rest are first in the next.

        The batch holds at least one item when ``items`` is not empty (``take_rows``).
        """
        ...

    def served(self, batch: Sequence[Pending]) -> None:
        """Called with each batch about to be inferred (to learn request sizes)."""
        ...


def total_rows(items: Sequence[Pending]) -> int:
    return sum(rows(p) for p in items)


def take_rows(items: list[Pending], max_rows: int) -> tuple[list[Pending], list[Pending]]:
    """Split ``items`` into a batch of at most ``max_rows`` rows and the rest, in order.

    The first item is always taken (a lone oversized request is split later
    by ``infer_capped``); entries that failed to decode count as 0 rows.
    """
    taken = 0
    for i, p in enumerate(items):
        n = rows(p)
        if i > 0 and taken + n > max_rows:
            return items[:i], items[i:]
        taken += n
    return items, []


def read_count(max_rows: int, rows_in_hand: int, rows_per_request: int) -> int:
    """How many entries to read: about enough to fill the batch, so few wait behind it."""
    room = max(0, max_rows - rows_in_hand)
    per = max(1, rows_per_request)
    return max(1, -(-room // per))


def infer_capped(
    infer: Callable[[Batch], InferResult], batch: Batch, max_rows: int
) -> tuple[object, list[dict[str, Any]] | None, int]:
    """``infer(batch)`` in calls of at most ``max_rows`` rows; return (actions, infos, calls).

    The row context is sliced with the observations, so every call sees its
    rows' tasks and instructions. ``infos`` is one dict per row, or None when
    no call returned any (calls that gave none contribute empty dicts).
    """
    n_rows = batch.rows
    if n_rows <= max_rows:
        actions, infos = split_result(infer(batch), n_rows)
        return actions, infos, 1
    parts: list[object] = []
    part_infos: list[list[dict[str, Any]] | None] = []
    for start in range(0, n_rows, max_rows):
        part = batch.slice(start, start + max_rows)
        actions, infos = split_result(infer(part), part.rows)
        parts.append(actions)
        part_infos.append(infos)
    for actions in parts:
        if not isinstance(actions, np.ndarray):
            return actions, None, len(parts)  # the caller's shape check names the problem
    merged = None
    if any(i is not None for i in part_infos):
        merged = []
        for start, infos in zip(range(0, n_rows, max_rows), part_infos, strict=True):
            n = min(max_rows, n_rows - start)
            merged.extend(infos if infos is not None else [{} for _ in range(n)])
    return np.concatenate(cast(list[np.ndarray], parts)), merged, len(parts)
