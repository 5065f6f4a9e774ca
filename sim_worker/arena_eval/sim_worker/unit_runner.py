"""Run one leased unit of a job to an ``Outcome``: pool, env, spec checks, rollout.

Why apart from the unit lease: this part knows jobs, pools, envs and episodes,
and nothing of how units are taken or settled on the stream (``unit_queue.py``).
Given a job and the lease on one of its units it:

* finds the unit's task (a unit holds episodes of one task of the job's suite) and its
  instruction (``envs.suites.instruction_for``), sent with every policy row;
* defers the unit when no live worker serves the job's pool (``pool_watch.py``);
* fails the job within seconds, before any request, when the task cannot be
  built or the pool's spec does not fit it (observations or action width);
* runs the unit's episodes that are not stored yet (results are write-once, so
  a unit taken over from a dead worker skips what that worker finished);
* with ``overlap`` (``--overlap``) and at least 2 env slots, splits the slots into two
  envs (lanes) and runs them double-buffered (``overlap.py``): one lane steps while the
  other's request is in flight, each lane over its own pool client; results are the same;
* records the episodes the job asks for (``--record``/``--video``, ``recording/``): each
  ended episode's frames are written once, before its result; the worker whose results
  complete the job consolidates the dataset's meta files (``broker.dataset.finalize``);
* classifies how the run ended: a pool that lost its workers mid-unit waits
  like any unserved pool, ``max_policy_timeouts`` unanswered requests in a row
  from live workers fail the job as hung, a remote policy error or a simulator
  error fails it, and an abort is a requeue, a drop (job terminal) or a lost
  lease. A stop or cancel during a wait for an answer interrupts that wait
  (``PolicyInterrupted``); the client is then discarded, so a late answer lands
  on a reply stream nobody reads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from arena_eval.broker import dataset, jobs, pool, results, telemetry
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.errors import BrokerUnavailable, ConfigError
from arena_eval.broker.jobs import Job, JobSpec
from arena_eval.broker.keys import Keys
from arena_eval.broker.spec import SpecMismatch
from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.client import PolicyInterrupted, PolicyTimeout, RemotePolicyError
from arena_eval.sim_worker.config import SimWorkerConfig
from arena_eval.sim_worker.envs import VectorEnv
from arena_eval.sim_worker.envs.suites import instruction_for
from arena_eval.sim_worker.kept import EnvCache, PoolClients
from arena_eval.sim_worker.lease import LEASE_LOST, Lease, Outcome
from arena_eval.sim_worker.pool_watch import PoolWatch
from arena_eval.sim_worker.recording import EpisodeWriter, Trajectory, TrajectoryBuffer
from arena_eval.sim_worker.rollout import (
    RolloutStats,
    Twin,
    filmed_only,
    run_episodes,
    spec_mismatch,
)

log = logging.getLogger("arena_eval.sim_worker")

#: Redis is unreachable: not the job's fault; the serve loop waits and retries.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, BrokerUnavailable, ConnectionError)


class RecordingFailed(Exception):
    """An episode could not be written to the job's recording (the job fails, saying so)."""


class UnitRunner:
    """Runs units for one worker; keeps its env and pool clients between units."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        worker_id: str,
        config: SimWorkerConfig,
        clients: PoolClients,
    ) -> None:
        self._r = r
        self.keys = keys
        self.worker_id = worker_id
        self.config = config
        self.clients = clients
        self.envs = EnvCache(config.vectorization)
        self.twins = EnvCache(config.vectorization)  # the second lane's env (``overlap``)
        self.pools = PoolWatch(r, keys, clients, pool_poll_s=config.pool_poll_s)

    def execute(self, job: Job, lease: Lease) -> Outcome:
        """Run ``lease.unit`` of ``job`` until its episodes are stored or it must stop."""
        try:
            task = unit_task(job.spec, lease.unit.start, lease.unit.count)
        except ValueError as exc:
            return self._fail(job, f"malformed work unit: {exc}")
        return self._execute(job, lease, job.spec.for_task(task))

    def _execute(self, job: Job, lease: Lease, spec_: JobSpec) -> Outcome:
        """``execute`` for a unit of one task: ``spec_`` is the job's spec narrowed to it."""
        instruction = instruction_for(spec_.task)
        timeouts = 0
        while True:
            if lease.abort.is_set():
                return self._aborted(job, lease)
            spec = self.pools.served_spec(job, lease)
            if spec is None:
                return Outcome.DEFER
            num_envs = min(job.spec.num_envs or self.config.num_envs, self.config.num_envs)
            try:
                env, twin = self._envs(spec_, num_envs)
            except Exception as exc:
                return self._fail(job, f"cannot build task {spec_.task!r}: {_describe(exc)}")
            hidden = filmed_only(env, spec, spec_)
            reason = spec_mismatch(env, spec, spec_, instruction=instruction, hidden=hidden)
            if reason is not None:
                return self._fail(job, reason)
            try:
                writer = _writer(job, spec_, env)
            except ConfigError as exc:
                return self._fail(job, str(exc))
            jobs.mark_running(self._r, self.keys, job.job_id)
            lease.phase = "running"
            done = results.existing(self._r, self.keys, job.job_id, lease.unit.indices)
            lease.episodes_done = len(done)
            try:
                todo = [i for i in lease.unit.indices if i not in done]
                self._rollout(
                    job, lease, (env, twin), todo, spec_.task, instruction, writer, hidden
                )
            except PolicyInterrupted:  # stopping or cancelled while waiting for an answer
                self.clients.discard(job.spec.pool)  # its reply stream may still get the answer
                return self._aborted(job, lease)
            except (PolicyTimeout, pool.PoolNotFound) as exc:
                live = pool.live_workers(self._r, self.keys, job.spec.pool)
                if not live:  # the pool lost its workers: wait for one like any unserved pool
                    self.pools.lost_workers(job.spec.pool)
                    log.warning(
                        "job %s: pool %r has no live worker left (%s); handing the unit back",
                        job.job_id, job.spec.pool, exc,
                    )  # fmt: skip
                    continue
                timeouts += 1
                reason = self._unanswered(job, len(live), timeouts)
                if timeouts >= self.config.max_policy_timeouts:
                    return self._fail(job, reason)
                log.warning("%s (%s); retrying", reason, exc)
                jobs.transition(
                    self._r, self.keys, job.job_id, jobs.JobState.RUNNING, reason,
                    only_from=(jobs.JobState.RUNNING,),
                )  # fmt: skip
                continue
            except (SpecMismatch, RemotePolicyError) as exc:
                return self._fail(job, f"pool {job.spec.pool!r}: {_describe(exc)}")
            except RecordingFailed as exc:
                return self._fail(job, str(exc))
            except REDIS_DOWN:
                raise
            except Exception as exc:
                log.exception("rollout of job %s failed", job.job_id)
                self.envs.drop()  # it may be broken: the next unit builds a fresh one
                self.twins.drop()
                return self._fail(job, f"simulation error in task {spec_.task!r}: {_describe(exc)}")
            return self._aborted(job, lease) if lease.abort.is_set() else Outcome.DONE

    def close(self) -> None:
        """Close the pool clients and the env (best effort)."""
        self.clients.close()
        self.envs.drop()
        self.twins.drop()

    def _envs(self, spec: JobSpec, num_envs: int) -> tuple[VectorEnv, VectorEnv | None]:
        """The unit's env, and with ``overlap`` (2+ slots) the second lane's: half each."""
        if not self.config.overlap or num_envs < 2:
            self.twins.drop()
            return self.envs.get(spec, num_envs), None
        first = (num_envs + 1) // 2
        return self.envs.get(spec, first), self.twins.get(spec, num_envs - first)

    def _unanswered(self, job: Job, live: int, timeouts: int) -> str:
        return (
            f"pool {job.spec.pool!r} has {live} live worker(s) but they did not "
            f"answer {timeouts} request(s) in a row within {self.config.policy_timeout_s:.0f} s; "
            "they may be hung or overloaded (`arena-eval pools` shows busy_s)"
        )

    def _rollout(
        self,
        job: Job,
        lease: Lease,
        envs: tuple[VectorEnv, VectorEnv | None],
        todo: list[int],
        task: str,
        instruction: str,
        writer: EpisodeWriter | None = None,
        hidden: frozenset[str] = frozenset(),
    ) -> None:
        env, second = envs
        rollout = f"{job.job_id}.{lease.unit.start}"  # large requests: this unit's own stream
        self.clients.get(job.spec.pool).begin_rollout(rollout)
        policy = ChunkedPolicy(self.clients.get(job.spec.pool), env.num_envs)
        skipped = lease.episodes_done
        spec = job.spec

        def buffer(slots: int) -> TrajectoryBuffer | None:
            if writer is None:
                return None
            return TrajectoryBuffer(slots, lambda i: spec.may_record(spec.locate(i)[2]))

        capture = buffer(env.num_envs)
        twin = None
        if second is not None:
            self.clients.get(spec.pool, 1).begin_rollout(rollout)
            lane_policy = ChunkedPolicy(self.clients.get(spec.pool, 1), second.num_envs)
            twin = Twin(second, lane_policy, buffer(second.num_envs))

        def record(episodes: list[tuple[EpisodeResult, Trajectory]]) -> None:
            assert writer is not None
            for res, traj in episodes:
                if not job.spec.records(job.spec.locate(res.index)[2], res.success):
                    continue
                try:
                    writer.write(traj, res, instruction)
                except (OSError, ConfigError) as exc:
                    raise RecordingFailed(
                        f"cannot record episode {res.index} into {job.spec.record_dir!r}: "
                        f"{_describe(exc)}; give --record-dir a location every sim worker "
                        "can write"
                    ) from exc

        def sink(episodes: list[EpisodeResult], stats: RolloutStats) -> None:
            rows = [
                replace(e, task=task, task_episode=job.spec.locate(e.index)[2]) for e in episodes
            ]
            _written, completed = results.record(
                self._r, self.keys, job.job_id, self.worker_id, time.time(), rows,
                stats.counters(), stats.sums,
            )  # fmt: skip
            telemetry.episodes(job.job_id, episodes, stats.steps)
            if completed:
                log.info("job %s completed", job.job_id)
                if job.spec.recording and job.spec.record_dir:
                    _finalize(job.spec.record_dir)

        def progress(finished: int) -> None:
            lease.episodes_done = skipped + finished

        run_episodes(
            env, policy, job_id=job.job_id, indices=todo, seed_of=job.spec.episode_seed,
            on_episodes=sink, should_stop=lease.abort.is_set, worker=self.worker_id,
            progress=progress, task=task, instruction=instruction, capture=capture,
            on_recorded=record, hidden=hidden, twin=twin,
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


def unit_task(spec: JobSpec, start: int, count: int) -> str:
    """The one task whose episodes ``[start, start + count)`` are (ValueError if they span
    two tasks or lie outside the job: ``JobSpec.shards`` never makes such a unit)."""
    first = spec.locate(start)
    last = spec.locate(start + count - 1)
    if first[0] != last[0]:
        raise ValueError(
            f"episodes {start}..{start + count - 1} span tasks {first[1]} and {last[1]}"
        )
    return first[1]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _writer(job: Job, spec: JobSpec, env: VectorEnv) -> EpisodeWriter | None:
    """The unit's episode writer when the job records (ConfigError: it cannot)."""
    if not spec.recording:
        return None
    # the whole job's spec: episode indices and task positions are the job's, not the unit's
    writer = EpisodeWriter(
        job.spec, job.job_id, env.observation_spec(), env.action_dim(), task=spec.task
    )
    if spec.video > 0 and not writer.images:
        raise ConfigError(
            f"--video needs camera frames but task {spec.task!r} observes no image; submit "
            "with --camera NAME (Meta-World, e.g. corner) or use a pixel task (pusht/pixels)"
        )
    return writer


def _finalize(url: str) -> None:
    """Consolidate the dataset's meta files; a failure is logged (readers scan markers)."""
    try:
        dataset.finalize(url)
    except Exception:
        log.exception("could not finalize the recording under %s", url)
