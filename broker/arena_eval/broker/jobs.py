"""Evaluation jobs: the spec a user submits, the record's state machine, and its queries.

A job is one Redis hash (``keys.job``) plus an entry in the ``keys.jobs()``
sorted set; its work is a set of units on the shared unit stream
(``broker/units.py``); its outcome is the write-once results hash and the
stats hash (``broker/results.py``). Submitting writes all of that in one
MULTI/EXEC, so a job is never visible without its units or vice versa (on a
Redis Cluster, where no transaction spans slots, ``broker/reconcile.py`` queues
the units of a record left without any).

State changes go through one Lua script, because several sim workers and a
user's ``cancel`` race on the same record: a terminal state (completed,
failed, cancelled) is final, whoever comes second. Completion is the same
script with a guard (every episode has a result), queued by the result store
right after the results it writes (``queue_completion``). States are stored as
readable strings so ``redis-cli HGET 'arena:job:{ID}' state`` tells the truth.

Job records are kept after the job ends: they *are* the results. ``prune``
(``arena-eval jobs prune --older-than 7d``) deletes ended jobs' four keys
(``job``, ``job_results``, ``job_stats``, ``job_workers``) and their ``jobs``
entry once they are old enough; their units are gone by then.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any

import redis
from redis.client import Pipeline

from arena_eval.broker.cluster import is_cluster, queue_script
from arena_eval.broker.errors import ArenaEvalError, ConfigError
from arena_eval.broker.fields import as_text
from arena_eval.broker.keys import Keys, check_name
from arena_eval.broker.units import (
    drop_job_units,
    enqueue,
    ensure_units_group,
    split_shards,
)

#: Episodes per work unit when the job spec does not say: twice the env slots
#: (so slots stay busy) but small enough that a crash re-runs little.
DEFAULT_SHARD_FACTOR = 2
#: Env slots per sim worker when neither the job nor the worker says.
DEFAULT_NUM_ENVS = 4
MAX_EPISODES = 1_000_000
#: ``JobSpec.record`` values besides a number of episodes per task.
RECORD_MODES = ("all", "failures")


class JobNotFound(ArenaEvalError):
    """No job with that id (or no job at all)."""


class JobState(str, Enum):
    QUEUED = "queued"
    WAITING_FOR_POOL = "waiting_for_pool"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
TERMINAL_LUA = "{" + ", ".join(f"['{s.value}'] = true" for s in TERMINAL) + "}"

# KEYS[1] job hash, KEYS[2] its results hash (read only with the guard). ARGV: new state, reason,
# now, allowed from-states ('' = any non-terminal), guard: '' or 'all_results' (move only once
# every episode has a result: HLEN(results) >= total > 0).
# Returns 1 if changed, 0 if refused (terminal, not in an allowed state, guard unmet), -1 if no job.
_TRANSITION = f"""
local terminal = {TERMINAL_LUA}
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return -1 end
if terminal[cur] then return 0 end
if ARGV[4] ~= '' and not string.find(',' .. ARGV[4] .. ',', ',' .. cur .. ',', 1, true) then
  return 0
end
if ARGV[5] == 'all_results' then
  local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0') or 0
  if total <= 0 or redis.call('HLEN', KEYS[2]) < total then return 0 end
end
if cur == ARGV[1] and redis.call('HGET', KEYS[1], 'reason') == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2])
if ARGV[1] == 'running' or ARGV[1] == 'completed' then
  redis.call('HSETNX', KEYS[1], 'started', ARGV[3])
end
if terminal[ARGV[1]] then redis.call('HSET', KEYS[1], 'finished', ARGV[3]) end
return 1
"""
#: The guard that completes a job only once every episode has a result.
ALL_RESULTS = "all_results"


@dataclass(frozen=True)
class JobSpec:
    """What to evaluate. Results depend only on this, never on the workers that ran it.

    A job runs ``episodes`` episodes of each task in ``tasks`` (a suite, e.g. Meta-World
    MT10, is one job; a single-task job is a suite of one: ``tasks == (task,)``, and
    ``task`` is always ``tasks[0]``). Task ``k``'s episode ``i`` is stored under the global
    index ``k * episodes + i`` and reset with seed ``seed + i``: the seed depends only on
    (task, episode index), never on how work was split, and a single-task job's seeds are
    what they always were. ``num_envs=None`` lets each sim worker use its own default;
    ``max_steps=None`` is the task's horizon. ``suite`` names the suite the tasks came from
    (for reports; None for a hand-picked list).

    Recording (``docs/recording.md``): ``record`` picks the episodes whose frames are stored
    under ``record_dir`` (a local directory or an fsspec URL): ``"all"``, ``"failures"`` or
    ``"N"`` (the first N episodes of each task); ``video`` films the first ``video`` episodes
    of each task (those are recorded too). Both are sim-side, write-once per episode.
    """

    task: str
    pool: str
    episodes: int
    num_envs: int | None = None
    max_steps: int | None = None
    seed: int = 0
    shard_size: int | None = None
    camera: str | None = None
    image_size: int = 224
    tasks: tuple[str, ...] = ()
    suite: str | None = None
    record: str | None = None
    record_dir: str | None = None
    video: int = 0

    def __post_init__(self) -> None:
        tasks = tuple(self.tasks) if self.tasks else (self.task,)
        object.__setattr__(self, "tasks", tasks)
        if not self.task:
            object.__setattr__(self, "task", tasks[0])
        for task in tasks:
            if not isinstance(task, str) or not task or any(c in task for c in "\r\n\t "):
                raise ConfigError(f"invalid task {task!r}: e.g. 'metaworld/door-open-v3'")
        if self.task != tasks[0]:
            raise ConfigError(f"task {self.task!r} must be the first of tasks {list(tasks)}")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"tasks must not repeat: {list(tasks)}")
        if self.suite is not None and not isinstance(self.suite, str):
            raise ConfigError(f"suite must be a name, got {self.suite!r}")
        check_name("pool", self.pool)
        _check_int("episodes", self.episodes, 1, MAX_EPISODES)
        _check_int("tasks", len(tasks), 1, MAX_EPISODES // self.episodes)
        _check_int("num_envs", self.num_envs, 1, 4096)
        _check_int("max_steps", self.max_steps, 1, 10**9)
        _check_int("seed", self.seed, 0, 2**62)
        _check_int("shard_size", self.shard_size, 1, MAX_EPISODES)
        _check_int("image_size", self.image_size, 1, 8192)
        self._check_recording()

    def _check_recording(self) -> None:
        if self.record is not None and self.record not in RECORD_MODES:
            if not (isinstance(self.record, str) and self.record.isdigit()):
                raise ConfigError(
                    f"record must be 'all', 'failures' or a number of episodes per task, "
                    f"got {self.record!r}"
                )
            _check_int("record", int(self.record), 1, MAX_EPISODES)
        _check_int("video", self.video, 0, MAX_EPISODES)
        wants = self.record is not None or self.video > 0
        if wants and not self.record_dir:
            raise ConfigError(
                "recording needs a place: give --record-dir DIR (a local directory every sim "
                "worker can write, or an fsspec URL such as s3://bucket/prefix)"
            )
        if self.record_dir is not None and not isinstance(self.record_dir, str):
            raise ConfigError(f"record_dir must be a path or URL, got {self.record_dir!r}")

    @property
    def recording(self) -> bool:
        """Whether any episode of this job is recorded."""
        return bool(self.record_dir) and (self.record is not None or self.video > 0)

    def records(self, task_episode: int, success: bool) -> bool:
        """Whether the episode with this index within its task, so ended, is recorded."""
        if not self.recording:
            return False
        if task_episode < self.video or self.record == "all":
            return True
        if self.record == "failures":
            return not success
        return self.record is not None and task_episode < int(self.record)

    def may_record(self, task_episode: int) -> bool:
        """Whether the episode might be recorded (before its outcome is known): frames of
        the others need not be kept while it runs."""
        if not self.recording:
            return False
        if self.record in RECORD_MODES or task_episode < self.video:
            return True
        return self.record is not None and task_episode < int(self.record)

    @property
    def total_episodes(self) -> int:
        """Episodes of the whole job: ``episodes`` per task."""
        return self.episodes * len(self.tasks)

    def effective_shard_size(self) -> int:
        default = DEFAULT_SHARD_FACTOR * (self.num_envs or DEFAULT_NUM_ENVS)
        return min(self.episodes, self.shard_size or default)

    def shards(self) -> list[tuple[int, int]]:
        """Units as (global start, count): each holds episodes of one task only."""
        size = self.effective_shard_size()
        return [
            (k * self.episodes + start, count)
            for k in range(len(self.tasks))
            for start, count in split_shards(self.episodes, size)
        ]

    def locate(self, index: int) -> tuple[int, str, int]:
        """(task position, task, episode index within the task) of global episode ``index``."""
        if not 0 <= index < self.total_episodes:
            raise ValueError(f"episode {index} is not in [0, {self.total_episodes})")
        pos, i = divmod(index, self.episodes)
        return pos, self.tasks[pos], i

    def episode_seed(self, index: int) -> int:
        """Reset seed of global episode ``index``: ``seed`` + its index within its task."""
        return self.seed + index % self.episodes

    def for_task(self, task: str) -> JobSpec:
        """This spec narrowed to one of its tasks (what a unit's env is built from)."""
        if task not in self.tasks:
            raise ValueError(f"task {task!r} is not one of {list(self.tasks)}")
        return replace(self, task=task, tasks=(task,), suite=None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> JobSpec:
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"malformed job spec: {exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """A spec from its stored JSON object (unknown keys ignored; ``tasks`` as a list)."""
        known = {k: data[k] for k in data if k in cls.__dataclass_fields__}
        if isinstance(known.get("tasks"), list):
            known["tasks"] = tuple(known["tasks"])
        if not isinstance(known.get("tasks", ()), tuple):
            raise ConfigError(f"tasks must be a list of task names, got {known['tasks']!r}")
        return cls(**known)


@dataclass(frozen=True)
class Job:
    """A job record as stored: spec, state, reason, timestamps (unix seconds)."""

    job_id: str
    spec: JobSpec
    state: JobState
    reason: str
    created: float
    started: float | None
    finished: float | None

    @property
    def total(self) -> int:
        return self.spec.total_episodes

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "spec": asdict(self.spec),
            "state": self.state.value,
            "reason": self.reason,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "total": self.total,
        }

    @classmethod
    def from_hash(cls, job_id: str, data: Mapping[Any, Any]) -> Job:
        d = {as_text(k): as_text(v) for k, v in data.items()}
        try:
            state = JobState(d.get("state", ""))
        except ValueError:
            raise ConfigError(f"job {job_id} has an unknown state {d.get('state')!r}") from None
        try:
            return cls(
                job_id=job_id,
                spec=JobSpec.from_json(d.get("spec", "{}")),
                state=state,
                reason=d.get("reason", ""),
                created=float(d.get("created", 0.0)),
                started=float(d["started"]) if d.get("started") else None,
                finished=float(d["finished"]) if d.get("finished") else None,
            )
        except ValueError as exc:
            raise ConfigError(f"job {job_id} has a malformed timestamp: {exc}") from None


def new_job_id(now: float | None = None) -> str:
    """Sortable and unique enough: UTC time to the second plus 24 random bits."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now or time.time()))
    return f"{stamp}-{secrets.token_hex(3)}"


def submit(r: redis.Redis, keys: Keys, spec: JobSpec, *, job_id: str | None = None) -> str:
    """Create the job record and queue its units atomically; return the job id."""
    if job_id is not None and r.exists(keys.job(check_name("job", job_id))):
        raise ConfigError(f"job {job_id} already exists; choose another id")
    job_id = job_id or new_job_id()
    now = time.time()
    ensure_units_group(r, keys)
    # One MULTI on one server. A cluster runs no transaction across slots (the job's, the jobs
    # index's, the unit stream's): there the record goes first, then its units and its index
    # entry, and ``reconcile`` queues the units of a record left without any.
    pipe = r.pipeline(transaction=not is_cluster(r))
    pipe.hset(
        keys.job(job_id),
        mapping={
            "spec": spec.to_json(),
            "state": JobState.QUEUED.value,
            "reason": "",
            "created": repr(now),
            "total": spec.total_episodes,
        },
    )
    if is_cluster(r):
        pipe.execute()
    pipe.zadd(keys.jobs(), {job_id: now})
    enqueue(pipe, keys, job_id, spec.shards())
    pipe.execute()
    return job_id


def get_job(r: redis.Redis, keys: Keys, job_id: str) -> Job:
    data = r.hgetall(keys.job(check_name("job", job_id)))
    if not data:
        raise JobNotFound(f"no job {job_id}; `arena-eval jobs` lists jobs")
    return Job.from_hash(job_id, data)


#: Jobs-set members read per round trip while looking for the latest valid id.
_SCAN_PAGE = 100


def latest_job_id(r: redis.Redis, keys: Keys) -> str:
    """The newest member of the jobs set that is a job id; junk written by hand is skipped."""
    start = 0
    while members := list(r.zrevrange(keys.jobs(), start, start + _SCAN_PAGE - 1)):
        for member in members:
            if (job_id := _job_id(member)) is not None:
                return job_id
        start += _SCAN_PAGE
    raise JobNotFound(
        "no jobs yet; submit one with `arena-eval submit --task TASK --pool POOL --episodes N`"
    )


def _job_id(member: Any) -> str | None:
    """A jobs-set member as a job id, or None if it cannot be one (junk from redis-cli)."""
    try:
        # strict: a lossy decoding would name another job, and ZREM of it would miss the member
        job_id = member.decode() if isinstance(member, bytes) else str(member)
        check_name("job", job_id)
    except (UnicodeDecodeError, ConfigError):
        return None
    return job_id


def transition(
    r: redis.Redis,
    keys: Keys,
    job_id: str,
    state: JobState,
    reason: str = "",
    *,
    only_from: tuple[JobState, ...] = (),
) -> bool:
    """Move a job to ``state`` unless it is terminal (or not in ``only_from``); True if moved."""
    rc = int(r.eval(_TRANSITION, 2, *_transition_args(keys, job_id, state, reason, only_from)))
    if rc < 0:
        raise JobNotFound(f"no job {job_id}; `arena-eval jobs` lists jobs")
    return rc == 1


def queue_completion(pipe: Pipeline, keys: Keys, job_id: str, now: float) -> None:
    """Queue on ``pipe`` the move to completed, guarded: it happens only once every episode of
    the job has a result, and only once (its reply is 1 for the call that completed the job).

    ``results.record`` queues it right after the episodes it stores, in the same round trip,
    so completion goes through the one transition script like every other state change.
    """
    args = _transition_args(keys, job_id, JobState.COMPLETED, "", (), now=now, guard=ALL_RESULTS)
    queue_script(pipe, _TRANSITION, args[:2], args[2:])


def _transition_args(
    keys: Keys,
    job_id: str,
    state: JobState,
    reason: str,
    only_from: tuple[JobState, ...],
    *,
    now: float | None = None,
    guard: str = "",
) -> list[str]:
    """KEYS then ARGV of the transition script."""
    allowed = ",".join(s.value for s in only_from)
    when = repr(time.time() if now is None else now)
    return [keys.job(job_id), keys.job_results(job_id), state.value, reason, when, allowed, guard]


def mark_waiting(r: redis.Redis, keys: Keys, job_id: str, reason: str) -> bool:
    return transition(
        r, keys, job_id, JobState.WAITING_FOR_POOL, reason,
        only_from=(JobState.QUEUED, JobState.WAITING_FOR_POOL),
    )  # fmt: skip


def mark_running(r: redis.Redis, keys: Keys, job_id: str) -> bool:
    """Running, with no reason: also clears a running job's stale "no live worker" hint
    once its pool serves again (a no-op when nothing changes)."""
    return transition(
        r, keys, job_id, JobState.RUNNING,
        only_from=(JobState.QUEUED, JobState.WAITING_FOR_POOL, JobState.RUNNING),
    )  # fmt: skip


def fail(r: redis.Redis, keys: Keys, job_id: str, reason: str) -> bool:
    """Fail a job (first reason wins) and drop its queued units."""
    moved = transition(r, keys, job_id, JobState.FAILED, reason)
    drop_job_units(r, keys, job_id)
    return moved


@dataclass(frozen=True)
class CancelOutcome:
    """The job after a cancel, and whether this call cancelled it (False: it had ended)."""

    job: Job
    cancelled_now: bool


def request_cancel(r: redis.Redis, keys: Keys, job_id: str) -> CancelOutcome:
    """Cancel a job and drop its queued units; workers on it stop within a heartbeat.

    Cancelling a job that already ended is not an error: nothing changes, and
    ``cancelled_now`` is False so the caller can say how it had ended.
    """
    get_job(r, keys, job_id)  # JobNotFound with the usual hint
    moved = transition(r, keys, job_id, JobState.CANCELLED, "cancelled by user")
    drop_job_units(r, keys, job_id)
    return CancelOutcome(get_job(r, keys, job_id), moved)


def cancel(r: redis.Redis, keys: Keys, job_id: str) -> Job:
    """``request_cancel``, returning only the job record as it is now."""
    return request_cancel(r, keys, job_id).job


def job_state(r: redis.Redis, keys: Keys, job_id: str) -> JobState | None:
    raw = r.hget(keys.job(job_id), "state")
    if raw is None:
        return None
    try:
        return JobState(as_text(raw))
    except ValueError:
        return None


def _check_int(name: str, value: int | None, lo: int, hi: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


# -- pruning ------------------------------------------------------------------------------
# KEYS: job, results, stats, workers (one slot: the job's hash tag). ARGV: job id, cutoff (unix
# s), 1 = dry run, the job's score in the jobs ZSET. An ended job (or a ZSET entry whose record is
# gone) whose end is before the cutoff loses its keys; its end is 'finished', else its submit
# time. Returns {state, end} if pruned, else {}; the caller then drops its ZSET entry, which lives
# on another slot (a cluster runs no script across slots).
_PRUNE = f"""
local terminal = {TERMINAL_LUA}
local state = redis.call('HGET', KEYS[1], 'state')
if state and not terminal[state] then return {{}} end
local ended = redis.call('HGET', KEYS[1], 'finished')
if not tonumber(ended or '') then ended = ARGV[4] end
if not tonumber(ended or '') or tonumber(ended) >= tonumber(ARGV[2]) then return {{}} end
if ARGV[3] ~= '1' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
end
return {{state or '', ended}}
"""
_PRUNE_BATCH = 500


@dataclass(frozen=True)
class PrunedJob:
    """A job whose keys ``prune`` deleted (or would delete, in a dry run)."""

    job_id: str
    state: str  # '' when only its entry in the jobs set was left
    ended: float


@dataclass(frozen=True)
class PruneReport:
    """What ``prune`` deleted (or would delete, in a dry run).

    ``junk``: members of the jobs set older than the cutoff that are not job ids
    (not UTF-8, or not a valid name; written by hand), shown with bad bytes
    replaced. They name no keys, so only the set entry goes.
    """

    pruned: list[PrunedJob]
    junk: list[str]


def prune(r: redis.Redis, keys: Keys, older_than_s: float, *, dry_run: bool = False) -> PruneReport:
    """Delete the keys of jobs that ended more than ``older_than_s`` ago, oldest first.

    Only completed, failed and cancelled jobs go (queued, waiting and running
    ones never do, nor records whose state is unreadable): the job hash, its
    results, stats and workers hashes, and its entry in the jobs set. Each job
    is checked and deleted in one script, so a job cannot start or end between
    the check and the delete. ``dry_run`` makes the same checks and deletes nothing.
    """
    if older_than_s < 0:
        raise ConfigError(f"older-than must not be negative, got {older_than_s}")
    cutoff = time.time() - older_than_s
    # a job submitted after the cutoff cannot have ended before it
    members: list[Any] = r.zrangebyscore(keys.jobs(), "-inf", f"({cutoff!r}", withscores=True)
    ids: list[str] = []
    scores: dict[str, float] = {}
    junk: list[Any] = []
    for member, score in members:
        job_id = _job_id(member)
        if job_id is None:
            junk.append(member)
        else:
            ids.append(job_id)
            scores[job_id] = float(score)
    if junk and not dry_run:
        r.zrem(keys.jobs(), *junk)  # the raw members: a decoded one would not match
    pruned: list[PrunedJob] = []
    for start in range(0, len(ids), _PRUNE_BATCH):
        batch = ids[start : start + _PRUNE_BATCH]
        pipe = r.pipeline(transaction=False)
        for job_id in batch:
            keys_ = [keys.job(job_id), keys.job_results(job_id), keys.job_stats(job_id),
                     keys.job_workers(job_id)]  # fmt: skip
            args = [job_id, repr(cutoff), int(dry_run), repr(scores[job_id])]
            queue_script(pipe, _PRUNE, keys_, args)
        gone: list[str] = []
        for job_id, reply in zip(batch, pipe.execute(), strict=True):
            if reply:
                pruned.append(PrunedJob(job_id, as_text(reply[0]), float(reply[1])))
                gone.append(job_id)
        if gone and not dry_run:
            r.zrem(keys.jobs(), *gone)
    return PruneReport(pruned, [as_text(m) for m in junk])
