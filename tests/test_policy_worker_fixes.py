"""Policy-worker fixes from issue 7: row cap, byte-bounded dead letters, clean start-up
failures, policy identity and declared tasks, and ``policy describe``.

Real Redis and real workers throughout: in threads where the point is what the
worker does, in subprocesses where the point is what a user sees at the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from arena_eval.broker import constants, jobs
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import live_workers, read_spec
from arena_eval.broker.protocol import F_DATA, F_RID
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import PolicySpec, SpecMismatch
from arena_eval.cli.app import app
from arena_eval.policy_worker.policy import Batch
from arena_eval.policy_worker.serve import build_worker
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.client import PolicyClient
from tests.policies_for_tests import DIM, EchoPolicy, expected_actions
from tests.worker_procs import REPO, child_env, wait_until

POOL = "fixes"


class RecordingEcho(EchoPolicy):
    """EchoPolicy that records the row count of every ``infer`` call."""

    def __init__(self) -> None:
        super().__init__(stall_s=0)
        self.seen: list[int] = []

    def infer(self, batch: Batch) -> np.ndarray:
        self.seen.append(batch.rows)
        return super().infer(batch)


class Running:
    """A PolicyWorker serving in a thread; stopped on exit."""

    def __init__(self, worker: PolicyWorker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True)

    def __enter__(self) -> PolicyWorker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "worker did not stop"


def rows_x(n: int, base: float) -> np.ndarray:
    return (base + np.arange(n * DIM, dtype=np.float32)).reshape(n, DIM)


@pytest.fixture
def echo_worker(settings: RedisSettings, r: redis.Redis) -> Iterator[PolicyWorker]:
    with Running(PolicyWorker(POOL, EchoPolicy(stall_s=0), settings, max_wait_ms=1.0)) as w:
        wait_until(lambda: live_workers(r, Keys(settings.prefix), POOL), 10, "the worker")
        yield w


# -- defect 4: --max-batch caps rows ------------------------------------------------------
def test_infer_never_sees_more_than_max_batch_rows(settings: RedisSettings) -> None:
    policy = RecordingEcho()
    worker = PolicyWorker(POOL, policy, settings, max_batch=8, max_wait_ms=30.0)
    sizes = [3, 5, 7, 2]
    per_client = 6
    sent: list[int] = []
    errors: list[BaseException] = []
    with Running(worker):
        barrier = threading.Barrier(len(sizes) + 1)

        def run(index: int, n: int) -> None:
            try:
                with PolicyClient(POOL, settings, timeout_s=30) as client:
                    barrier.wait()
                    for i in range(per_client):
                        x = rows_x(n, base=index * 10_000 + i * 100)
                        got = client.infer({"x": x}, [f"{index}-{k}" for k in range(n)])
                        np.testing.assert_array_equal(got, expected_actions(x))
                        sent.append(n)
            except BaseException as exc:
                errors.append(exc)

        def big() -> None:  # one request larger than the cap: split, never refused
            try:
                with PolicyClient(POOL, settings, timeout_s=30) as client:
                    barrier.wait()
                    x = rows_x(20, base=-5_000)
                    got = client.infer({"x": x}, [f"big-{k}" for k in range(20)])
                    np.testing.assert_array_equal(got, expected_actions(x))
                    sent.append(20)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i, n)) for i, n in enumerate(sizes)]
        threads.append(threading.Thread(target=big))
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert sum(sent) == sum(sizes) * per_client + 20  # every row answered, correctly
    assert max(policy.seen) <= 8, policy.seen
    assert sum(policy.seen) == sum(sent)
    assert worker.stats.rows == sum(sent)


# -- defect 5: dead letters bounded in bytes ----------------------------------------------
def test_dead_letters_are_bounded_in_bytes_per_pool(
    settings: RedisSettings, echo_worker: PolicyWorker, r: redis.Redis
) -> None:
    keys = Keys(settings.prefix)
    stream = keys.pool_requests(POOL)
    big = bytes(range(256)) * 1024  # 256 KiB of garbage, recognisable prefix
    small = 1020  # more than the documented cap of 1000 entries
    large = 30
    pipe = r.pipeline(transaction=False)
    for i in range(small):
        pipe.xadd(stream, {F_RID: f"s{i}", F_DATA: b"not a message"})
    for i in range(large):
        pipe.xadd(stream, {F_RID: f"big{i}", F_DATA: big})
    # many fields, a huge field name: still one bounded entry
    pipe.xadd(stream, {**{f"f{i}": b"x" * 5000 for i in range(20)}, b"n" * 100_000: b"v"})
    pipe.execute()
    total = small + large + 1
    dead = keys.pool_dead(POOL)

    def all_written() -> bool:  # the many-field entry went last
        last = r.xrevrange(dead, count=1)
        return (
            echo_worker.stats.dead_letters >= total and bool(last) and b"orig_fields" in last[0][1]
        )

    wait_until(all_written, 60, "every dead letter")
    assert r.xlen(dead) <= constants.DEAD_STREAM_MAXLEN
    letters = r.xrange(dead)
    for _id, fields in letters:
        size = sum(len(k) + len(v) for k, v in fields.items())
        assert size <= constants.DEAD_ENTRY_MAX_BYTES, (size, list(fields)[:8])
    bigs = [f for _id, f in letters if f.get(b"orig:rid", b"").startswith(b"big")]
    assert len(bigs) == large
    for fields in bigs:
        assert fields[b"orig:d"] == big[: constants.DEAD_PAYLOAD_KEEP_BYTES]
        assert int(fields[b"orig:d:bytes"]) == len(big)
        assert fields[b"reason"]
    assert int(letters[-1][1][b"orig_fields"]) == 21
    usage = r.memory_usage(dead, samples=0)
    assert usage is not None and usage <= constants.DEAD_STREAM_MAX_BYTES


# -- defect 9: policy serve fails in one line, and says "serving" only once it serves ------
def _serve_cli(settings: RedisSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env(settings, COLUMNS="400")
    return subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", "policy", "serve", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out.stdout + out.stderr
    assert "serving" not in out.stdout, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_serve_against_unreachable_redis_is_one_line(settings: RedisSettings) -> None:
    unreachable = RedisSettings(url="redis://127.0.0.1:1", prefix=settings.prefix)
    out = _serve_cli(unreachable, "--pool", "x", "--policy", "zero")
    line = _one_error_line(out)
    assert "cannot reach Redis" in line and "127.0.0.1:1" in line


def test_serve_refused_by_the_pool_is_one_line(
    settings: RedisSettings, echo_worker: PolicyWorker
) -> None:
    out = _serve_cli(
        settings, "--pool", POOL, "--policy", "zero", "--policy-arg", "action_shape=2x3"
    )
    line = _one_error_line(out)
    assert f"cannot join pool {POOL!r}" in line and "action_shape" in line


class ClosingEcho(RecordingEcho):
    """RecordingEcho that counts ``close`` calls (a GPU policy frees its model there)."""

    closed = 0

    def close(self) -> None:
        self.closed += 1


def test_refused_worker_releases_its_policy(
    settings: RedisSettings, echo_worker: PolicyWorker
) -> None:
    from arena_eval.policy_worker.serve import serve

    policy = ClosingEcho()  # another class: another identity, so the pool refuses it
    with pytest.raises(SpecMismatch, match=f"cannot join pool {POOL!r}"):
        serve(PolicyWorker(POOL, policy, settings))
    assert policy.closed == 1


# -- defect 11: a pool's workers run the same policy; jobs for other tasks fail -----------
def test_worker_with_other_policy_arguments_is_refused(
    settings: RedisSettings, r: redis.Redis
) -> None:
    first = build_worker(POOL, "random", {"action_shape": "1x4", "seed": "1"}, settings)
    with Running(first):
        wait_until(lambda: live_workers(r, Keys(settings.prefix), POOL), 10, "the first worker")
        same = build_worker(POOL, "random", {"action_shape": "1x4", "seed": "1"}, settings)
        same.register()  # the same identity joins
        same.deregister()
        other = build_worker(POOL, "random", {"action_shape": "1x4", "seed": "2"}, settings)
        with pytest.raises(SpecMismatch) as refused:
            other.register()
    message = str(refused.value)
    assert f"cannot join pool {POOL!r}" in message
    assert "seed=2" in message and "seed=1" in message  # both identities named
    spec = read_spec(r, Keys(settings.prefix), POOL)
    assert spec is not None and spec.policy is not None and spec.policy.params["seed"] == "1"


def test_metaworld_expert_for_another_task_is_refused(
    settings: RedisSettings, r: redis.Redis
) -> None:
    pytest.importorskip("metaworld")
    opener = build_worker(POOL, "metaworld-expert", {"task": "door-open-v3"}, settings)
    with Running(opener):
        wait_until(lambda: live_workers(r, Keys(settings.prefix), POOL), 10, "the door opener")
        closer = build_worker(POOL, "metaworld-expert", {"task": "door-close-v3"}, settings)
        with pytest.raises(SpecMismatch, match=r"door-close-v3.*door-open-v3"):
            closer.register()
    raw = json.loads(r.get(Keys(settings.prefix).pool_spec(POOL)) or "{}")
    assert raw["tasks"] == ["metaworld/door-open-v3"]  # readable with redis-cli GET
    assert raw["policy"]["params"] == {"chunk": "1", "task": "door-open-v3"}


def test_specs_without_identity_still_load_and_match() -> None:
    old = PolicySpec.from_json(
        '{"name": "zero", "version": "0", "action_shape": [1, 4], "action_dtype": "float32",'
        ' "observations": null, "extra": {}}'
    )
    assert old.policy is None and old.tasks is None
    assert old.serves_task("metaworld/anything-v3")
    new = PolicySpec.from_json(json.dumps({**old.to_dict(), "tasks": ["metaworld/door-open-v3"]}))
    assert new.serves_task("metaworld/door-open-v3")
    assert not new.serves_task("metaworld/drawer-open-v3")
    bare = PolicySpec(name="cp", action_shape=(1, 1), tasks=("CartPole-v1",))
    assert bare.serves_task("gym/CartPole-v1") and bare.serves_task("CartPole-v1")


def test_drawer_job_on_door_expert_pool_fails_with_the_reason(
    settings: RedisSettings, r: redis.Redis
) -> None:
    pytest.importorskip("metaworld")
    from arena_eval.sim_worker.service import SimWorker

    keys = Keys(settings.prefix)
    expert = build_worker("door", "metaworld-expert", {"task": "door-open-v3"}, settings)
    with Running(expert):
        wait_until(lambda: live_workers(r, keys, "door"), 10, "the door expert")
        job_id = jobs.submit(
            r, keys, JobSpec(task="metaworld/drawer-open-v3", pool="door", episodes=2)
        )
        SimWorker(settings, num_envs=1, block_ms=100).run(burst=True)
    job = jobs.get_job(r, keys, job_id)
    assert job.state is JobState.FAILED
    assert "'metaworld/drawer-open-v3'" in job.reason
    assert "metaworld/door-open-v3" in job.reason
    assert expert.stats.requests == 0  # refused before any request


# -- defect 15 (part): policy describe, and help on every option --------------------------
def test_policy_describe_lists_arguments_and_spec() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["policy", "describe", "random", "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)
    args = {a["name"]: a for a in info["arguments"]}
    assert set(args) == {"action_shape", "obs", "action_dtype", "seed", "low", "high"}
    assert args["seed"]["default"] == 0 and args["seed"]["type"] == "int >= 0"
    assert all(a["help"] for a in info["arguments"])
    assert info["spec"]["action_shape"] == [16, 36] and info["spec"]["policy"]["digest"]
    assert "Uniform random" in info["description"]

    # a policy with a required argument (metaworld-expert's task became optional)
    text = runner.invoke(app, ["policy", "describe", "torch"], terminal_width=200)
    assert text.exit_code == 0, text.output
    assert "path" in text.output and "(required)" in text.output
    assert "--policy-arg path=" in text.output  # how to see the spec


def test_every_policy_command_option_has_help() -> None:
    import typer

    root = typer.main.get_command(app)
    policy_group = root.commands["policy"]  # type: ignore[attr-defined]
    commands = [*policy_group.commands.values(), root.commands["pools"]]  # type: ignore[attr-defined]
    assert {c.name for c in commands} >= {"serve", "describe", "pools"}
    for command in commands:
        for param in command.params:
            if param.param_type_name == "option":
                assert getattr(param, "help", None), f"{command.name}: {param.opts} has no help"
