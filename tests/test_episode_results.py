"""One results schema (``EpisodeResult``) and one writer of job state (the transition script).

The schema round-trips through its stored JSON and refuses what is not a result with the
reason the read side warns with. Completion is the transition script with a guard, queued by
the result store in the same round trip: no other Lua script in broker/ writes a job's state,
and the guard completes a job exactly once, when its last episode is stored.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path

import pytest
import redis

from arena_eval.broker import jobs, results
from arena_eval.broker.episode import BadEpisode, EpisodeResult
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys

BROKER = Path(__file__).resolve().parents[1] / "broker" / "arena_eval" / "broker"


def episode(i: int, **kw: object) -> EpisodeResult:
    fields: dict[str, object] = {"index": i, "length": 5, "success": True, "worker": "w"}
    fields.update(kw)
    return EpisodeResult(**fields)  # type: ignore[arg-type]


def test_an_episode_round_trips_through_its_stored_json() -> None:
    ep = EpisodeResult(
        index=7, seed=107, success=True, return_=412.5, length=93,
        metrics={"near": 1.0, "max_near": None}, worker="host-1", wall_s=0.41,
        finished_at=1732123456.7, task="metaworld/door-open-v3", task_episode=2,
    )  # fmt: skip
    stored = json.loads(ep.encode())
    assert stored == {
        "index": 7, "seed": 107, "success": True, "return": 412.5, "length": 93,
        "metrics": {"near": 1.0, "max_near": None}, "worker": "host-1", "wall_s": 0.41,
        "finished_at": 1732123456.7, "task": "metaworld/door-open-v3", "task_episode": 2,
    }  # fmt: skip
    assert EpisodeResult.decode(ep.encode()) == ep
    assert EpisodeResult.decode(json.dumps({"index": 0, "length": 3})) == EpisodeResult(0, 3)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("not json {", "not valid JSON"),
        ('"a string"', "not a JSON object"),
        ('{"index": "ten", "length": 5}', "'index' is not a non-negative integer"),
        ('{"index": -1, "length": 5}', "'index' is not a non-negative integer"),
        ('{"index": 11}', "'length' is not a number"),
        ('{"index": 1, "length": 5, "success": 1}', "'success' is not true or false"),
        ('{"index": 1, "length": 5, "return": "x"}', "'return' is not a number"),
        ('{"index": 1, "length": 5, "task": 3}', "'task' is not a string"),
        (
            '{"index": 1, "length": 5, "task_episode": -2}',
            "'task_episode' is not a non-negative integer",
        ),
        ('{"index": 1, "length": 5, "worker": 3}', "'worker' is not a string"),
        ('{"index": 1, "length": 5, "metrics": {"a": "b"}}', "'metrics' is not an object"),
    ],
)
def test_what_is_not_a_result_is_refused_with_the_reason(raw: str, why: str) -> None:
    with pytest.raises(BadEpisode, match=re.escape(why)):
        EpisodeResult.decode(raw)


def test_an_episode_that_cannot_be_stored_cannot_be_built() -> None:
    with pytest.raises(BadEpisode, match="'return' is not a number"):
        episode(0, return_=math.nan)  # JSON has no NaN: the rollout stores None instead
    with pytest.raises(BadEpisode, match="'index'"):
        episode(-1)


def test_only_the_transition_script_writes_a_job_state() -> None:
    writes = {
        path.name: len(re.findall(r"redis\.call\('HSET',\s*KEYS\[\d+\],\s*'state'", text))
        for path in BROKER.glob("*.py")
        if (text := path.read_text())
    }
    assert {name: n for name, n in writes.items() if n} == {"jobs.py": 1}


def test_the_last_episode_completes_the_job_once(r: redis.Redis, keys: Keys) -> None:
    job_id = jobs.submit(r, keys, JobSpec(task="CartPole-v1", pool="p", episodes=4))
    assert results.record(r, keys, job_id, "a", 1.0, [episode(0), episode(1)], {}, {}) == (
        2, False,
    )  # fmt: skip
    assert jobs.get_job(r, keys, job_id).state is JobState.QUEUED
    # two workers store the last two episodes (and one of them a duplicate) at the same time
    outcomes: list[tuple[int, bool]] = []
    barrier = threading.Barrier(2)

    def store(worker: str, eps: list[EpisodeResult]) -> None:
        client = redis.Redis(connection_pool=r.connection_pool)
        barrier.wait()
        outcomes.append(results.record(client, keys, job_id, worker, 2.0, eps, {}, {}))

    threads = [
        threading.Thread(target=store, args=("b", [episode(2), episode(3)])),
        threading.Thread(target=store, args=("c", [episode(3, success=False)])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sum(written for written, _ in outcomes) == 2  # episode 3 stored once
    assert [done for _, done in outcomes].count(True) == 1  # and the job completed once
    job = jobs.get_job(r, keys, job_id)
    assert job.state is JobState.COMPLETED and job.reason == ""
    assert job.started == 2.0 and job.finished == 2.0  # never marked running: started = end
    # later records (a retried unit) change nothing
    assert results.record(r, keys, job_id, "d", time.time(), [episode(0)], {}, {}) == (0, False)
    assert jobs.get_job(r, keys, job_id).finished == 2.0
