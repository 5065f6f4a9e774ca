"""A job record as the read side sees it: parsed field by field, never raising.

Sim workers read jobs strictly (``jobs.Job``): a record they cannot trust is
an error. ``status``, ``results`` and ``jobs`` must instead show whatever is
there, because an operator runs them precisely when something looks wrong. A
``JobView`` keeps every field that parses; each one that does not becomes a
warning naming the key and the field (an unknown state shows as
``invalid:<value>``, an unreadable spec as an empty one), and the other jobs
are listed as usual.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis

from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.fields import as_text, number, warn_field
from arena_eval.broker.jobs import JobNotFound, JobSpec, JobState
from arena_eval.broker.keys import Keys, check_name

#: Prefix of the state shown for a record whose state this version does not know.
INVALID_STATE = "invalid:"


@dataclass(frozen=True)
class JobView:
    """What the reports show of one job hash; ``spec`` is ``{}`` when unreadable."""

    job_id: str
    spec: dict[str, Any]
    state: str
    reason: str
    created: float | None
    started: float | None
    finished: float | None
    total: int
    valid_spec: JobSpec | None

    @property
    def known_state(self) -> JobState | None:
        try:
            return JobState(self.state)
        except ValueError:
            return None

    @property
    def terminal(self) -> bool:
        state = self.known_state
        return state is not None and state.terminal

    def elapsed_s(self, now: float | None = None) -> float | None:
        """Running time: from first start to finish (or now)."""
        if self.started is None:
            return None
        end = self.finished if self.finished is not None else (now or time.time())
        return max(0.0, end - self.started)

    def to_dict(self) -> dict[str, Any]:
        """The same keys as ``jobs.Job.to_dict``."""
        return {
            "job_id": self.job_id,
            "spec": self.spec,
            "state": self.state,
            "reason": self.reason,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "total": self.total,
        }


def view_from_hash(job_id: str, data: Mapping[Any, Any], key: str, warnings: list[str]) -> JobView:
    """Parse a job hash; every field that does not parse is warned about and left out."""
    d = {as_text(k): v for k, v in data.items()}
    raw_state = as_text(d.get("state", ""))
    state = raw_state
    if raw_state not in {s.value for s in JobState}:
        warn_field(warnings, key, "state", raw_state, "not a job state")
        state = INVALID_STATE + raw_state
    spec, valid = _spec(d.get("spec"), key, warnings)

    def when(field: str) -> float | None:
        return number(warnings, key, field, d[field]) if d.get(field) else None

    total = (
        valid.total_episodes
        if valid
        else number(warnings, key, "total", d.get("total", 0), counter=True)
    )
    return JobView(
        job_id=job_id,
        spec=spec,
        state=state,
        reason=as_text(d.get("reason", "")),
        created=when("created"),
        started=when("started"),
        finished=when("finished"),
        total=int(total or 0),
        valid_spec=valid,
    )


def _spec(raw: Any, key: str, warnings: list[str]) -> tuple[dict[str, Any], JobSpec | None]:
    if raw is None:
        warn_field(warnings, key, "spec", "", "missing")
        return {}, None
    try:
        data = json.loads(raw)
    except ValueError:
        warn_field(warnings, key, "spec", raw, "not valid JSON")
        return {}, None
    if not isinstance(data, dict):
        warn_field(warnings, key, "spec", raw, "not a JSON object")
        return {}, None
    try:
        spec = JobSpec.from_dict(data)
    except (ArenaEvalError, TypeError) as exc:
        warn_field(warnings, key, "spec", raw, f"not a valid job spec ({exc})")
        return data, None
    return asdict(spec), spec


def read_job_view(r: redis.Redis, keys: Keys, job_id: str, warnings: list[str]) -> JobView:
    key = keys.job(check_name("job", job_id))
    data = r.hgetall(key)
    if not data:
        raise JobNotFound(f"no job {job_id}; `arena-eval jobs` lists jobs")
    return view_from_hash(job_id, data, key, warnings)


def list_job_views(
    r: redis.Redis, keys: Keys, limit: int, warnings: list[str]
) -> list[tuple[JobView, int, int]]:
    """Newest first: (job, episodes done, successes), in one round trip.

    A member of the jobs set that is not a valid job id is warned about and skipped.
    """
    ids = []
    for member in r.zrevrange(keys.jobs(), 0, max(0, limit - 1)):
        try:
            ids.append(check_name("job", as_text(member)))
        except ArenaEvalError:
            warn_field(warnings, keys.jobs(), member, member, "not a valid job id; skipped")
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(keys.job(job_id))
        pipe.hmget(keys.job_stats(job_id), "episodes", "successes")
    replies = pipe.execute()
    out = []
    for n, job_id in enumerate(ids):
        data, counts = replies[2 * n], replies[2 * n + 1]
        if not data:
            continue
        view = view_from_hash(job_id, data, keys.job(job_id), warnings)
        done, successes = (
            int(number(warnings, keys.job_stats(job_id), field, raw, counter=True) or 0)
            if raw is not None
            else 0
            for field, raw in zip(("episodes", "successes"), counts, strict=True)
        )
        out.append((view, done, successes))
    return out
