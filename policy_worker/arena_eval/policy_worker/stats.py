"""A policy worker's counters, published in its heartbeat (``arena-eval pools``)."""

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

    def as_dict(self) -> dict[str, float]:
        mean_batch = self.rows / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "requests": self.requests,
            "rows": self.rows,
            "infer_calls": self.infer_calls,
            "infer_s": round(self.infer_s, 6),
            "mean_batch_rows": round(mean_batch, 3),
            "errors": self.errors,
            "dead_letters": self.dead_letters,
            "reclaimed": self.reclaimed,
            "expired": self.expired,
            "stale": self.stale,
            "started": self.started,
        }
