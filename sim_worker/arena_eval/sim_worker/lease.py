"""The unit a sim worker holds (``Lease``), and how running it ended (``Outcome``).

Why a module of its own: three parts of the worker share the held unit and no
one of them owns it. The serve loop (``service.py``) takes a unit and settles it
by its outcome; the heartbeat thread (``heartbeat.py``) renews its lease and
aborts it when the job ends or another worker took it over; the unit runner
(``unit_runner.py``) and the rollout poll the abort event once per step.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, field

from arena_eval.broker.units import WorkUnit

#: The abort reason when another worker took the unit over: its owner settles it, not us.
LEASE_LOST = "lease lost"


class Outcome(enum.Enum):
    """How a unit's run ended, which says how it is settled on the unit stream."""

    DONE = "done"  # ack + delete
    DROP = "drop"  # job terminal: ack + delete
    REQUEUE = "requeue"  # worker stopping: hand back now
    DEFER = "defer"  # no live worker serves its pool: hand back, take other work
    LOST = "lost"  # another worker holds it now: touch nothing

    @property
    def finishes(self) -> bool:
        """The unit leaves the stream (acked and deleted)."""
        return self in (Outcome.DONE, Outcome.DROP)

    @property
    def hands_back(self) -> bool:
        """The unit goes back to the tail of the queue as a fresh entry."""
        return self in (Outcome.REQUEUE, Outcome.DEFER)


@dataclass
class Lease:
    """The unit this worker holds, and what the heartbeat thread reports about it."""

    unit: WorkUnit
    abort: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    phase: str = "starting"
    episodes_done: int = 0

    def stop(self, reason: str) -> None:
        """Abort the unit's run (once: the first reason stays)."""
        if not self.abort.is_set():
            self.reason = reason
            self.abort.set()
