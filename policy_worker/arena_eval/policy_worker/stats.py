"""A policy worker's counters, published in its heartbeat (``arena-eval pools``).

``busy_fraction`` (seconds inside ``policy.infer`` over wall seconds since the
worker started) and ``mean_batch_rows`` say whether the model is saturated:
a busy fraction well below 1 while requests wait means the batcher, not the
model, is the bottleneck (``arena-eval bench saturation`` measures both).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class WorkerStats:
    batches: int = 0
    requests: int = 0
    rows: int = 0
    infer_calls: int = 0
    infer_s: float = 0.0
    errors: int = 0
    dead_letters: int = 0
    reclaimed: int = 0
    expired: int = 0
    stale: int = 0
    started: float = field(default_factory=time.time)

    def busy_fraction(self, now: float | None = None) -> float:
        """Seconds inside ``infer`` over the wall seconds since ``started`` (0 at the start)."""
        wall = (time.time() if now is None else now) - self.started
        return min(1.0, self.infer_s / wall) if wall > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        mean_batch = self.rows / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "requests": self.requests,
            "rows": self.rows,
            "infer_calls": self.infer_calls,
            "infer_s": round(self.infer_s, 6),
            "mean_batch_rows": round(mean_batch, 3),
            "busy_fraction": round(self.busy_fraction(), 4),
            "errors": self.errors,
            "dead_letters": self.dead_letters,
            "reclaimed": self.reclaimed,
            "expired": self.expired,
            "stale": self.stale,
            "started": self.started,
        }
