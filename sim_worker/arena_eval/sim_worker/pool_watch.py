"""Is a job's pool served now? If not, the job says so and its unit is deferred.

Why apart from the rollout: this is the "no silent hang, no head-of-line
blocking" rule, and it is about pools, not envs. A unit whose pool no live
worker serves (a mistyped ``--pool``, an abandoned job, a pool whose last worker
died mid-unit) is not run: the job says ``waiting_for_pool`` with the command
that would fix it (a running job keeps its state and gets the hint), and the
serve loop hands the unit back so other jobs run meanwhile. A pool found
unserved is not asked again for ``pool_poll_s``, so a round through many
deferred units of one pool costs a few commands per unit.
"""

from __future__ import annotations

import logging
import time

import redis

from arena_eval.broker import jobs, pool
from arena_eval.broker.jobs import Job
from arena_eval.broker.keys import Keys
from arena_eval.broker.spec import PolicySpec
from arena_eval.sim_worker.kept import PoolClients
from arena_eval.sim_worker.lease import Lease

log = logging.getLogger("arena_eval.sim_worker")

#: Jobs whose wait is remembered as logged, at most (then the memory starts over).
_MAX_WARNED = 1000


class PoolWatch:
    """The served spec of a job's pool, or the job marked as waiting for one."""

    def __init__(
        self, r: redis.Redis, keys: Keys, clients: PoolClients, *, pool_poll_s: float
    ) -> None:
        self._r = r
        self.keys = keys
        self.clients = clients
        self.pool_poll_s = pool_poll_s
        self._unserved_until: dict[str, float] = {}  # pool -> when to look for workers again
        self._warned: set[str] = set()  # jobs whose wait for a pool was logged

    def served_spec(self, job: Job, lease: Lease) -> PolicySpec | None:
        """The pool's spec if a live worker serves it now; else say why the job waits, None."""
        name = job.spec.pool
        if time.monotonic() >= self._unserved_until.get(name, 0.0):
            spec = pool.read_spec(self._r, self.keys, name)
            if spec is not None and pool.live_workers(self._r, self.keys, name):
                try:
                    spec = self.clients.get(name).connect()
                except pool.PoolNotFound:
                    pass
                else:
                    self._unserved_until.pop(name, None)
                    self._warned.discard(job.job_id)
                    return spec
            self._unserved_until[name] = time.monotonic() + self.pool_poll_s
        lease.phase = "waiting_for_pool"
        self._say_waiting(job)
        return None

    def lost_workers(self, name: str) -> None:
        """The pool lost its workers mid-unit: look for one at once, like any unserved pool."""
        self._unserved_until.pop(name, None)

    def _say_waiting(self, job: Job) -> None:
        name = job.spec.pool
        reason = (
            f"no live policy worker serves pool {name!r}; start one with "
            f"`arena-eval policy serve --pool {name} --policy ...`"
        )
        if not jobs.mark_waiting(self._r, self.keys, job.job_id, reason):
            jobs.transition(  # a running job (its pool died): keep its state, give the hint
                self._r, self.keys, job.job_id, jobs.JobState.RUNNING, reason,
                only_from=(jobs.JobState.RUNNING,),
            )  # fmt: skip
        if job.job_id not in self._warned:
            if len(self._warned) > _MAX_WARNED:
                self._warned.clear()
            self._warned.add(job.job_id)
            log.warning("job %s: %s; its units wait in the queue", job.job_id, reason)
