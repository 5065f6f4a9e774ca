"""The sim worker process: take a unit, wait for its pool, check specs, run it, ack it.

How the job-level guarantees come out of this loop:

* **Crash recovery.** A unit is read through the consumer group and stays in
  the pending list until acked. A heartbeat thread renews the lease
  (``units.renew``) a few times per lease period; a worker killed with -9 stops
  renewing and, ``lease_ms`` later, any worker's XAUTOCLAIM takes the unit
  over. Episodes already stored are skipped, and results are write-once.
* **Cancel and fail.** The same heartbeat reads the job state (every
  ``HEARTBEAT_INTERVAL_S``) and sets the unit's abort event when the job is
  terminal; the rollout polls that event once per step, so a cancelled job
  stops within about a second. Units of terminal jobs are acked and deleted.
* **No silent hang, no head-of-line blocking.** A unit whose pool no live
  worker serves (a mistyped ``--pool``, an abandoned job, a pool whose last
  worker died mid-unit) is *deferred*: the job says ``waiting_for_pool`` with
  the command that would fix it, and the unit goes back to the tail of the
  queue as a fresh entry (``units.requeue``; a deferral is not a delivery, so
  it never counts toward ``max_deliveries``). The worker moves on to the next
  unit, so other jobs run, and every deferred unit comes round again, in queue
  order, so none is starved. A worker that finds only deferred units waits
  ``pool_poll_s`` per round instead of spinning. A pool whose spec does not
  fit the task (observations or action width) fails the job within seconds,
  before any request, with the mismatch spelled out.
* **Graceful stop.** ``stop()`` (SIGTERM/SIGINT) aborts the running unit and
  puts it back at the tail of the queue at once instead of waiting for the
  lease to lapse. A stop or a cancel that comes while the worker waits for a
  policy answer (up to ``policy_timeout_s`` on a pool whose worker died) ends
  that wait within a second: the PolicyClient polls ``should_stop`` between
  its blocking reads and raises ``PolicyInterrupted``; the client is then
  discarded, so a late answer lands on a reply stream nobody reads.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from arena_eval.broker import fleet, jobs, pool, results, streams, units
from arena_eval.broker.connection import connect
from arena_eval.broker.errors import BrokerUnavailable, ConfigError
from arena_eval.broker.fields import as_text
from arena_eval.broker.jobs import Job, JobNotFound, JobSpec
from arena_eval.broker.keys import SIM_GROUP, Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.signals import stop_on_signals
from arena_eval.broker.spec import PolicySpec, SpecMismatch
from arena_eval.broker.units import WorkUnit
from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.client import (
    PolicyClient,
    PolicyInterrupted,
    PolicyTimeout,
    RemotePolicyError,
)
from arena_eval.sim_worker.envs import VectorEnv, make_env
from arena_eval.sim_worker.envs.gym_env import VECTORIZATIONS
from arena_eval.sim_worker.rollout import RolloutStats, run_episodes, spec_mismatch

log = logging.getLogger("arena_eval.sim_worker")

LEASE_LOST = "lease lost"
#: Consecutive unanswered policy requests on one unit before its job fails.
MAX_POLICY_TIMEOUTS = 3
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, BrokerUnavailable, ConnectionError)


class Outcome(enum.Enum):
    DONE = "done"  # ack + delete
    DROP = "drop"  # job terminal: ack + delete
    REQUEUE = "requeue"  # worker stopping: hand back now
    DEFER = "defer"  # no live worker serves its pool: hand back, take other work
    LOST = "lost"  # another worker holds it now: touch nothing


@dataclass
class Lease:
    """The unit this worker holds, and what the heartbeat thread reports about it."""

    unit: WorkUnit
    abort: threading.Event = field(default_factory=threading.Event)
    reason: str = ""
    phase: str = "starting"
    episodes_done: int = 0

    def stop(self, reason: str) -> None:
        if not self.abort.is_set():
            self.reason = reason
            self.abort.set()


class SimWorker:
    """Run work units from the shared queue until ``stop()`` (or, in burst mode, until idle)."""

    def __init__(
        self,
        settings: RedisSettings | None = None,
        *,
        client: redis.Redis | None = None,
        num_envs: int = jobs.DEFAULT_NUM_ENVS,
        lease_ms: int = 10_000,
        worker_id: str | None = None,
        block_ms: int = 1000,
        policy_timeout_s: float = 30.0,
        pool_poll_s: float = 0.5,
        vectorization: str = "sync",
        max_deliveries: int = 5,
    ) -> None:
        check_options(
            num_envs=num_envs, lease_ms=lease_ms, policy_timeout_s=policy_timeout_s,
            vectorization=vectorization, max_deliveries=max_deliveries,
        )  # fmt: skip
        self.settings = settings or RedisSettings.from_env()
        self.keys = Keys(self.settings.prefix)
        self._r = client if client is not None else connect(self.settings)
        self._raw = streams.raw_client(self._r)
        self.num_envs = num_envs
        self.lease_ms = lease_ms
        self.block_ms = block_ms
        self.policy_timeout_s = policy_timeout_s
        self.pool_poll_s = pool_poll_s
        self.vectorization = vectorization
        self.max_deliveries = max_deliveries
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.units_done = 0
        self.units_deferred = 0
        self._deferred_in_a_row = 0
        self._unserved_until: dict[str, float] = {}  # pool -> when to look for workers again
        self._warned: set[str] = set()  # jobs whose wait for a pool was logged
        self._stop = threading.Event()
        self._lease: Lease | None = None
        self._next_claim = 0.0
        self._env: VectorEnv | None = None
        self._env_key: tuple[Any, ...] | None = None
        self._clients: dict[str, PolicyClient] = {}
        self._beat: threading.Thread | None = None
        self._joined = False

    # -- lifecycle -------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        lease = self._lease
        if lease is not None:
            lease.stop("worker stopping")

    def join(self) -> None:
        """Join the unit queue and publish the first heartbeat: the first writes, so a Redis
        user without the sim role is refused here, before the worker says it is serving."""
        if not self._joined:
            units.ensure_units_group(self._r, self.keys)
            self._heartbeat_once()
            self._joined = True

    def run(self, *, burst: bool = False) -> int:
        """Process units until stopped; ``burst`` returns once nothing is queued or pending."""
        self.join()
        self._beat = threading.Thread(
            target=self._heartbeat_loop, name="sim-heartbeat", daemon=True
        )
        self._beat.start()
        try:
            while not self._stop.is_set():
                try:
                    unit = self._next_unit()
                    if unit is None:
                        if burst and self._queue_empty():
                            break
                        continue
                    if self.process(unit) is Outcome.DEFER:
                        self._pace_deferrals()
                    else:
                        self._deferred_in_a_row = 0
                except _REDIS_DOWN as exc:
                    log.warning("lost Redis (%s); retrying", exc)
                    self._stop.wait(0.5)
                except ResponseError as exc:
                    if not streams.group_lost(exc):
                        raise
                    log.warning("unit stream or group vanished (%s); recreating", exc)
                    units.ensure_units_group(self._r, self.keys)
        finally:
            self._stop.set()
            if self._beat is not None:
                self._beat.join(2.0)
            self._close()
        return self.units_done

    def _close(self) -> None:
        for c in self._clients.values():
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()
        self._drop_env()
        with contextlib.suppress(Exception):
            units.leave_group(self._r, self.keys, self.worker_id)
        with contextlib.suppress(Exception):
            fleet.deregister(self._r, self.keys, self.worker_id)

    # -- taking units ------------------------------------------------------------
    def _next_unit(self) -> WorkUnit | None:
        """A unit whose lease lapsed (checked every lease/2), else a new one (blocking read)."""
        found: list[WorkUnit | str] = []
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + max(0.2, self.lease_ms / 2000.0)
            found, deleted = units.claim_stale(self._raw, self.keys, self.worker_id, self.lease_ms)
            units.finish(self._r, self.keys, *deleted)
            if found and isinstance(found[0], WorkUnit) and self._poisoned(found[0]):
                return None
        if not found:
            found = units.read_new(self._r, self.keys, self.worker_id, self.block_ms)
        for item in found:
            if isinstance(item, WorkUnit):
                return item
            log.warning("dropping malformed unit entry %s", item)
            units.finish(self._r, self.keys, item)
        return None

    def _poisoned(self, unit: WorkUnit) -> bool:
        """Fail the job of a unit whose workers keep dying on it, instead of retrying forever."""
        n = units.deliveries(self._r, self.keys, unit.entry_id)
        log.info("took over %s (lease lapsed; delivery %d)", unit, n)
        if n <= self.max_deliveries:
            return False
        end = unit.start + unit.count - 1
        jobs.fail(
            self._r, self.keys, unit.job_id,
            f"episodes {unit.start}-{end} were taken over {n - 1} times: each sim worker "
            f"running them died or stalled past its lease (max {self.max_deliveries} "
            "deliveries); check the sim workers' logs for a simulator crash",
        )  # fmt: skip
        units.finish(self._r, self.keys, unit.entry_id)
        return True

    def _queue_empty(self) -> bool:
        if self._r.xlen(self.keys.units()):
            return False
        summary = self._r.xpending(self.keys.units(), SIM_GROUP)
        return not int(summary.get("pending", 0))

    def process(self, unit: WorkUnit) -> Outcome:
        """Run one unit to an outcome and settle it on the stream."""
        try:
            job = jobs.get_job(self._r, self.keys, unit.job_id)
        except JobNotFound:
            job = None
        if job is None or job.state.terminal:
            units.finish(self._r, self.keys, unit.entry_id)
            return Outcome.DROP
        lease = Lease(unit)
        self._lease = lease
        if self._stop.is_set():
            lease.stop("worker stopping")
        try:
            outcome = self._execute(job, lease)
        finally:
            self._lease = None
        if outcome in (Outcome.DONE, Outcome.DROP):
            units.finish(self._r, self.keys, unit.entry_id)
        elif outcome in (Outcome.REQUEUE, Outcome.DEFER):
            units.requeue(self._r, self.keys, unit, self.worker_id)
        if outcome is Outcome.DEFER:
            self.units_deferred += 1
            log.debug("unit %s of job %s: deferred", unit.indices, job.job_id)
            return outcome
        log.info("unit %s of job %s: %s %s", unit.indices, job.job_id, outcome.value, lease.reason)
        self.units_done += 1
        return outcome

    def _pace_deferrals(self) -> None:
        """After a whole round of deferred units, wait ``pool_poll_s`` instead of spinning."""
        self._deferred_in_a_row += 1
        if self._deferred_in_a_row >= max(1, int(self._r.xlen(self.keys.units()))):
            self._deferred_in_a_row = 0
            self._stop.wait(self.pool_poll_s)

    # -- running a unit ------------------------------------------------------------
    def _execute(self, job: Job, lease: Lease) -> Outcome:
        timeouts = 0
        while True:
            if lease.abort.is_set():
                return self._aborted(job, lease)
            spec = self._served_spec(job, lease)
            if spec is None:
                return Outcome.DEFER
            num_envs = min(job.spec.num_envs or self.num_envs, self.num_envs)
            try:
                env = self._env_for(job.spec, num_envs)
            except Exception as exc:
                return self._fail(job, f"cannot build task {job.spec.task!r}: {_describe(exc)}")
            reason = spec_mismatch(env, spec, job.spec)
            if reason is not None:
                return self._fail(job, reason)
            jobs.mark_running(self._r, self.keys, job.job_id)
            lease.phase = "running"
            done = results.existing(self._r, self.keys, job.job_id, lease.unit.indices)
            lease.episodes_done = len(done)
            try:
                self._rollout(job, lease, env, [i for i in lease.unit.indices if i not in done])
            except PolicyInterrupted:  # stopping or cancelled while waiting for an answer
                self._discard_client(job.spec.pool)  # its reply stream may still get the answer
                return self._aborted(job, lease)
            except (PolicyTimeout, pool.PoolNotFound) as exc:
                live = pool.live_workers(self._r, self.keys, job.spec.pool)
                if not live:  # the pool lost its workers: wait for one like any unserved pool
                    self._unserved_until.pop(job.spec.pool, None)
                    log.warning(
                        "job %s: pool %r has no live worker left (%s); handing the unit back",
                        job.job_id, job.spec.pool, exc,
                    )  # fmt: skip
                    continue
                timeouts += 1
                reason = (
                    f"pool {job.spec.pool!r} has {len(live)} live worker(s) but they did not "
                    f"answer {timeouts} request(s) in a row within {self.policy_timeout_s:.0f} s; "
                    "they may be hung or overloaded (`arena-eval pools` shows busy_s)"
                )
                if timeouts >= MAX_POLICY_TIMEOUTS:
                    return self._fail(job, reason)
                log.warning("%s (%s); retrying", reason, exc)
                jobs.transition(
                    self._r, self.keys, job.job_id, jobs.JobState.RUNNING, reason,
                    only_from=(jobs.JobState.RUNNING,),
                )  # fmt: skip
                continue
            except (SpecMismatch, RemotePolicyError) as exc:
                return self._fail(job, f"pool {job.spec.pool!r}: {_describe(exc)}")
            except _REDIS_DOWN:
                raise
            except Exception as exc:
                log.exception("rollout of job %s failed", job.job_id)
                self._drop_env()  # it may be broken: the next unit builds a fresh one
                return self._fail(
                    job, f"simulation error in task {job.spec.task!r}: {_describe(exc)}"
                )
            return self._aborted(job, lease) if lease.abort.is_set() else Outcome.DONE

    def _served_spec(self, job: Job, lease: Lease) -> PolicySpec | None:
        """The pool's spec if a live worker serves it now; else say why the job waits, None.

        A pool found unserved is not asked again for ``pool_poll_s``, so a round through
        many deferred units of one pool costs a few commands per unit.
        """
        name = job.spec.pool
        if time.monotonic() >= self._unserved_until.get(name, 0.0):
            spec = pool.read_spec(self._r, self.keys, name)
            if spec is not None and pool.live_workers(self._r, self.keys, name):
                try:
                    spec = self._client_for(name).connect()
                except pool.PoolNotFound:
                    pass
                else:
                    self._unserved_until.pop(name, None)
                    self._warned.discard(job.job_id)
                    return spec
            self._unserved_until[name] = time.monotonic() + self.pool_poll_s
        lease.phase = "waiting_for_pool"
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
            if len(self._warned) > 1000:
                self._warned.clear()
            self._warned.add(job.job_id)
            log.warning("job %s: %s; its units wait in the queue", job.job_id, reason)
        return None

    def _rollout(self, job: Job, lease: Lease, env: VectorEnv, todo: list[int]) -> None:
        client = self._clients[job.spec.pool]
        policy = ChunkedPolicy(client, env.num_envs)
        skipped = lease.episodes_done

        def sink(episodes: list[dict[str, Any]], stats: RolloutStats) -> None:
            _written, completed = results.record(
                self._r, self.keys, job.job_id, self.worker_id, time.time(), episodes,
                stats.counters(), stats.sums,
            )  # fmt: skip
            if completed:
                log.info("job %s completed", job.job_id)

        def progress(finished: int) -> None:
            lease.episodes_done = skipped + finished

        run_episodes(
            env, policy, job_id=job.job_id, indices=todo, seed_of=job.spec.episode_seed,
            on_episodes=sink, should_stop=lease.abort.is_set, worker=self.worker_id,
            progress=progress,
        )  # fmt: skip

    def _aborted(self, job: Job, lease: Lease) -> Outcome:
        if lease.reason == LEASE_LOST:
            return Outcome.LOST
        state = jobs.job_state(self._r, self.keys, job.job_id)
        if state is None or state.terminal:
            return Outcome.DROP
        return Outcome.REQUEUE

    def _fail(self, job: Job, reason: str) -> Outcome:
        log.error("job %s failed: %s", job.job_id, reason)
        jobs.fail(self._r, self.keys, job.job_id, reason)
        return Outcome.DROP

    def _env_for(self, spec: JobSpec, num_envs: int) -> VectorEnv:
        """The env for this job, reused across units of the same task and shape."""
        key = (spec.task, num_envs, spec.max_steps, spec.camera, spec.image_size)
        if self._env is None or self._env_key != key:
            self._drop_env()
            self._env = make_env(
                spec.task, num_envs, seed=spec.seed, max_steps=spec.max_steps,
                camera=spec.camera, image_size=spec.image_size, vectorization=self.vectorization,
            )  # fmt: skip
            self._env_key = key
        return self._env

    def _drop_env(self) -> None:
        if self._env is not None:
            with contextlib.suppress(Exception):
                self._env.close()
            self._env = None

    def _client_for(self, pool_name: str) -> PolicyClient:
        client = self._clients.get(pool_name)
        if client is None:
            client = PolicyClient(
                pool_name, self.settings, client=self._r, timeout_s=self.policy_timeout_s,
                handshake=False, should_stop=self._lease_aborted,
            )  # fmt: skip
            self._clients[pool_name] = client
        return client

    def _lease_aborted(self) -> bool:
        """True once the running unit must stop: a stop signal, a cancel, a lost lease."""
        lease = self._lease
        return self._stop.is_set() or (lease is not None and lease.abort.is_set())

    def _discard_client(self, pool_name: str) -> None:
        client = self._clients.pop(pool_name, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    # -- heartbeat ---------------------------------------------------------------
    def _status(self) -> dict[str, Any]:
        lease = self._lease
        data: dict[str, Any] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "num_envs": self.num_envs,
            "lease_ms": self.lease_ms,
            "units_done": self.units_done,
            "state": "stopping" if self._stop.is_set() else "idle",
        }
        if lease is not None:
            u = lease.unit
            data.update(
                state=lease.phase, job=u.job_id, unit=f"{u.start}-{u.start + u.count}",
                unit_episodes=u.count, episodes_done=lease.episodes_done,
            )  # fmt: skip
        return data

    def _heartbeat_once(self) -> None:
        lease = self._lease
        pipe = self._r.pipeline(transaction=False)
        fleet.heartbeat(pipe, self.keys, self.worker_id, self._status())
        if lease is not None:
            pipe.hget(self.keys.job(lease.unit.job_id), "state")
        replies = pipe.execute()
        if lease is None:
            return
        state = as_text(replies[-1]) if replies[-1] is not None else "deleted"
        if state == "deleted" or jobs.JobState(state).terminal:
            lease.stop(f"job {state}")
        elif not units.renew(self._r, self.keys, lease.unit.entry_id, self.worker_id):
            lease.stop(LEASE_LOST)

    def _heartbeat_loop(self) -> None:
        interval = min(fleet.HEARTBEAT_INTERVAL_S, self.lease_ms / 3000.0)
        while not self._stop.wait(interval):
            try:
                self._heartbeat_once()
            except Exception as exc:  # Redis away: the main loop reconnects; keep beating
                log.debug("heartbeat failed: %s", exc)


def serve(
    worker: SimWorker, *, burst: bool = False, on_joined: Callable[[], None] | None = None
) -> int:
    """Run ``worker`` until SIGTERM/SIGINT/SIGHUP, which hand the running unit back and exit
    cleanly. ``on_joined`` runs once the worker has joined (the CLI says "serving" there)."""
    with stop_on_signals(worker.stop, "handing the running unit back"):
        worker.join()  # inside the handlers: once it is visible as live, a signal stops it cleanly
        if on_joined is not None:
            on_joined()
        return worker.run(burst=burst)


def check_options(
    *,
    num_envs: int,
    lease_ms: int,
    policy_timeout_s: float,
    vectorization: str,
    max_deliveries: int,
) -> None:
    """Refuse bad worker options at start-up, not on every job (raises ``ConfigError``)."""
    problems = []
    if vectorization not in VECTORIZATIONS:
        problems.append(f"vectorization must be one of {', '.join(VECTORIZATIONS)}, "
                        f"not {vectorization!r}")  # fmt: skip
    if num_envs < 1:
        problems.append(f"num_envs must be at least 1, not {num_envs}")
    if lease_ms < 100:
        problems.append(f"lease_ms must be at least 100, not {lease_ms}")
    if policy_timeout_s <= 0:
        problems.append(f"policy_timeout_s must be positive, not {policy_timeout_s}")
    if max_deliveries < 1:
        problems.append(f"max_deliveries must be at least 1, not {max_deliveries}")
    if problems:
        raise ConfigError("invalid sim worker options: " + "; ".join(problems))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
