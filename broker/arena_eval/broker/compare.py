"""Compare two jobs (two checkpoints) task by task: a paired exact test when episodes pair.

Why paired: two jobs with the same tasks and seed reset task ``t``'s episode ``i`` to the same
initial state, so each episode of job A has a twin in job B. Episodes both solve or both fail
say nothing about which checkpoint is better; only the *discordant* pairs do. McNemar's exact
test asks whether the flips A-only vs B-only are a fair coin: a two-sided binomial test with
p = 1/2 on the discordant pairs (``math.comb``, no scipy). On fixed seeds it is far more
sensitive than comparing two rates, because the per-episode difficulty cancels out.

* Paired (same seed, tasks in common): pairs are matched by (task, episode index within the
  task); per task and overall (all pairs of the common tasks) it gives both rates, the
  difference ``rate_b - rate_a`` with the Agresti-Min 95 % interval for paired proportions
  (add 1/2 to each cell, then Wald), the exact McNemar p-value, and the flips each way
  (``a_only``: A succeeded and B failed; ``b_only``: the reverse), plus ``both``/``neither``.
* Unpaired (different seeds): the two-proportion z-test (pooled; the chi-square test of the
  2x2 table without continuity correction) with Newcombe's hybrid-score interval for the
  difference (from the two Wilson intervals), and ``why_unpaired`` says so.

Everything is plain arithmetic on ``EpisodeResult`` rows; ``status.compare_report`` reads the
two jobs from Redis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.jobs import JobSpec
from arena_eval.broker.metrics import Z_95, ratio, wilson_interval
from arena_eval.broker.per_task import task_of

#: Columns of a comparison row (``compare --json``: ``tasks`` and ``overall``).
COMPARE_COLUMNS = (
    "task", "test", "n_a", "n_b", "rate_a", "rate_b", "diff", "diff_low", "diff_high",
    "p_value", "pairs", "a_only", "b_only", "both", "neither",
)  # fmt: skip
MCNEMAR = "mcnemar-exact"
TWO_PROPORTION = "two-proportion-z"
OVERALL = "(overall)"


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of ``a_only`` of ``a_only + b_only``
    discordant pairs against p = 1/2 (1.0 when there is no discordant pair)."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"counts must not be negative, got {a_only}, {b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / (1 << n))


def two_proportion_test(s1: int, n1: int, s2: int, n2: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test (None if a side has no episode)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (s2 / n2 - s1 / n1) / se
    return math.erfc(abs(z) / math.sqrt(2))


def paired_diff_interval(
    a_only: int, b_only: int, pairs: int, z: float = Z_95
) -> tuple[float, float]:
    """Agresti-Min interval for ``rate_b - rate_a`` from paired counts (1/2 added per cell)."""
    if pairs <= 0:
        return -1.0, 1.0
    b, c, n = a_only + 0.5, b_only + 0.5, pairs + 2.0
    d = (c - b) / n
    se = math.sqrt(max(0.0, (b + c) - (c - b) ** 2 / n)) / n
    return max(-1.0, d - z * se), min(1.0, d + z * se)


def newcombe_interval(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid-score interval for ``s2/n2 - s1/n1`` (independent samples)."""
    if n1 <= 0 or n2 <= 0:
        return -1.0, 1.0
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson_interval(s1, n1)
    l2, u2 = wilson_interval(s2, n2)
    d = p2 - p1
    return d - math.hypot(p2 - l2, u1 - p1), d + math.hypot(u2 - p2, p1 - l1)


def _key(e: EpisodeResult, tasks: Sequence[str]) -> tuple[str, int]:
    return task_of(e, tasks), e.task_episode if e.task_episode is not None else e.index


def paired_row(task: str, pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """The comparison of paired outcomes (A's success, B's success)."""
    n = len(pairs)
    a_only = sum(1 for a, b in pairs if a and not b)
    b_only = sum(1 for a, b in pairs if b and not a)
    both = sum(1 for a, b in pairs if a and b)
    low, high = paired_diff_interval(a_only, b_only, n)
    rate_a, rate_b = ratio(a_only + both, n), ratio(b_only + both, n)
    return {
        "task": task, "test": MCNEMAR, "n_a": n, "n_b": n, "rate_a": rate_a, "rate_b": rate_b,
        "diff": ratio(b_only - a_only, n), "diff_low": low, "diff_high": high,
        "p_value": mcnemar_exact(a_only, b_only), "pairs": n, "a_only": a_only,
        "b_only": b_only, "both": both, "neither": n - a_only - b_only - both,
    }  # fmt: skip


def unpaired_row(task: str, a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """The comparison of two independent samples of outcomes."""
    s1, n1, s2, n2 = sum(a), len(a), sum(b), len(b)
    low, high = newcombe_interval(s1, n1, s2, n2)
    rate_a, rate_b = ratio(s1, n1), ratio(s2, n2)
    diff = rate_b - rate_a if rate_a is not None and rate_b is not None else None
    return {
        "task": task, "test": TWO_PROPORTION, "n_a": n1, "n_b": n2, "rate_a": rate_a,
        "rate_b": rate_b, "diff": diff, "diff_low": low, "diff_high": high,
        "p_value": two_proportion_test(s1, n1, s2, n2), "pairs": 0, "a_only": None,
        "b_only": None, "both": None, "neither": None,
    }  # fmt: skip


def why_unpaired(spec_a: JobSpec, spec_b: JobSpec) -> str:
    """Why episodes of the two jobs do not pair one to one ('' if they do)."""
    if not set(spec_a.tasks) & set(spec_b.tasks):
        return "the jobs have no task in common"
    if spec_a.seed != spec_b.seed:
        return f"the jobs use different seeds ({spec_a.seed} vs {spec_b.seed})"
    return ""


def compare_episodes(
    spec_a: JobSpec,
    episodes_a: Sequence[EpisodeResult],
    spec_b: JobSpec,
    episodes_b: Sequence[EpisodeResult],
) -> dict[str, Any]:
    """Per-task and overall comparison of job B against job A (module docstring).

    Returns ``{"paired", "why_unpaired", "common_tasks", "only_a", "only_b", "tasks",
    "overall"}``; each row has ``COMPARE_COLUMNS``. Only tasks of both jobs are compared.
    """
    common = [t for t in spec_a.tasks if t in spec_b.tasks]
    why = why_unpaired(spec_a, spec_b)
    by_a = {_key(e, spec_a.tasks): e for e in episodes_a}
    by_b = {_key(e, spec_b.tasks): e for e in episodes_b}
    rows: list[dict[str, Any]] = []
    if not why:
        all_pairs: list[tuple[bool, bool]] = []
        for task in common:
            keys = sorted(k for k in by_a if k[0] == task and k in by_b)
            pairs = [(by_a[k].success, by_b[k].success) for k in keys]
            all_pairs += pairs
            rows.append(paired_row(task, pairs))
        overall = paired_row(OVERALL, all_pairs)
    else:
        for task in common:
            a = [e.success for k, e in by_a.items() if k[0] == task]
            b = [e.success for k, e in by_b.items() if k[0] == task]
            rows.append(unpaired_row(task, a, b))
        in_a = [e.success for k, e in by_a.items() if not common or k[0] in common]
        in_b = [e.success for k, e in by_b.items() if not common or k[0] in common]
        overall = unpaired_row(OVERALL, in_a, in_b)
    return {
        "paired": not why,
        "why_unpaired": why,
        "common_tasks": common,
        "only_a": [t for t in spec_a.tasks if t not in spec_b.tasks],
        "only_b": [t for t in spec_b.tasks if t not in spec_a.tasks],
        "tasks": rows,
        "overall": overall,
    }
