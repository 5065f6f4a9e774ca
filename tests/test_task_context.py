"""Per-row task context end to end: episode id, step, start, task and instruction per row.

A policy defined here records every ``Batch`` it is handed. Two sims (each a thread with its
own PolicyClient, as two sim workers are) send rows with distinct per-row tasks and
instructions into one pool; the batches must mix both senders and every row's context must
be its sender's. Strings travel as msgpack strings (never object arrays, never pickle),
non-ASCII included; a pool that needs instructions refuses rows without one; the multi-task
Meta-World expert serves two tasks in one batch. Real Redis, real workers, real simulators.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import redis

from arena_eval.broker import codec
from arena_eval.broker.episode import EpisodeResult
from arena_eval.broker.errors import CodecError
from arena_eval.broker.jobs import JobSpec
from arena_eval.broker.protocol import InferRequest
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import FieldSpec, MissingInstruction, PolicySpec
from arena_eval.policy_worker.policy import Batch, InferResult, Policy
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.chunking import ChunkedPolicy
from arena_eval.sim_worker.client import PolicyClient, RemotePolicyError
from arena_eval.sim_worker.rollout import RolloutStats, run_episodes, spec_mismatch

POOL = "context"
DIM = 3


class RecordingPolicy(Policy):
    """Echoes each row's code ``x[:, 0]`` and records every batch's rows and context.

    ``infer`` returns one info dict per row naming what it saw, so the sims can check
    the reply side too.
    """

    def __init__(self, *, needs_instruction: bool = False) -> None:
        self.needs_instruction = needs_instruction
        self.batches: list[Batch] = []
        self.lock = threading.Lock()

    def spec(self) -> PolicySpec:
        return PolicySpec(
            name="recording",
            action_shape=(1, DIM),
            observations={"x": FieldSpec("float32", (DIM,))},
            needs_instruction=self.needs_instruction,
        )

    def infer(self, batch: Batch) -> InferResult:
        with self.lock:
            self.batches.append(batch)
        infos = [
            {"code": float(c), "task": t, "instruction": i, "step": int(s)}
            for c, t, i, s in zip(
                batch.obs["x"][:, 0].tolist(), batch.tasks, batch.instructions,
                batch.steps.tolist(), strict=True,
            )
        ]  # fmt: skip
        return batch.obs["x"][:, None, :].astype(np.float32), infos


class Served:
    """A PolicyWorker in a thread serving ``policy`` on POOL."""

    def __init__(self, settings: RedisSettings, policy: Policy, **knobs: Any) -> None:
        self.worker = PolicyWorker(POOL, policy, settings, **knobs)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self) -> PolicyWorker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "worker did not stop"


@pytest.fixture
def clean(r: redis.Redis) -> Iterator[None]:
    yield  # ``r`` deletes the test's keys after the workers stop


# --------------------------------------------------------------------------- the codec


def test_utf8_context_round_trips_as_msgpack_strings_never_object_arrays() -> None:
    instructions = ["öffne die Tür", "引き出しを閉めて", "put the 🍎 in the bowl", ""]
    request = InferRequest(
        rid="r1",
        client="c1",
        episode_ids=["job:0", "job:1", "job:2", "job:3"],
        obs={"x": np.zeros((4, DIM), np.float32)},
        steps=[0, 5, 17, 2**40],
        starts=[True, False, False, True],
        tasks=["metaworld/door-open-v3", "metaworld/drawer-close-v3", "pusht/état", ""],
        instructions=instructions,
    )
    data = codec.dumps(request.to_message())
    back = InferRequest.from_message(codec.loads(data))
    assert back.instructions == instructions
    assert back.tasks == request.tasks and back.episode_ids == request.episode_ids
    assert back.steps == [0, 5, 17, 2**40] and back.starts == [True, False, False, True]
    assert all(type(s) is str for s in back.instructions + back.tasks)
    # The header is plain msgpack: the strings are msgpack str, in UTF-8, and the only
    # array segment is the observation (no object array, no pickle, no extra segment).
    (header_len,) = struct.unpack_from("<I", data, 4)
    header = data[8 : 8 + header_len]
    arrays: list[int] = []
    plain = msgpack.unpackb(header, raw=False, ext_hook=lambda code, _: arrays.append(code))
    assert plain["instructions"] == instructions and plain["tasks"] == request.tasks
    assert arrays == [1]  # one array extension: obs["x"]
    assert "引き出しを閉めて".encode() in header
    assert b"pickle" not in data and b"\x80\x04\x95" not in data  # no pickle protocol 4 frame
    with pytest.raises(CodecError, match=r"not numeric|object|unsupported"):
        codec.dumps({"tasks": np.array(["a", "b"], dtype=object)})


def test_malformed_context_is_refused() -> None:
    msg = InferRequest(
        rid="r", client="c", episode_ids=["e"], obs={"x": np.zeros((1, DIM), np.float32)}
    ).to_message()
    for name, bad in (("tasks", [1]), ("steps", ["3"]), ("starts", [1]), ("instructions", "a")):
        with pytest.raises(CodecError, match=name):
            InferRequest.from_message({**msg, name: bad})
    request = InferRequest.from_message({**msg, "tasks": ["a", "b"]})
    with pytest.raises(CodecError, match="2 tasks for 1 observation rows"):
        request.fill_context(1)
    request = InferRequest.from_message(msg)
    request.fill_context(1)  # empty lists become one default per row
    assert (request.tasks, request.instructions, request.steps, request.starts) == (
        [""], [""], [0], [False],
    )  # fmt: skip


# --------------------------------------------------------------------------- through a pool


def _sender(
    settings: RedisSettings, sim: int, rounds: int, barrier: threading.Barrier,
    seen: dict[float, tuple[str, str, str, int, bool]], errors: list[BaseException],
) -> None:  # fmt: skip
    """One sim: ``rounds`` requests of 3 rows, each row with its own code and context."""
    try:
        with PolicyClient(POOL, settings, timeout_s=20) as client:
            for k in range(rounds):
                codes = [1000.0 * sim + 10 * k + row for row in range(3)]
                ids = [f"sim{sim}:ep{row}" for row in range(3)]
                tasks = [f"metaworld/task-{sim}-{row}" for row in range(3)]
                instructions = [f"sim {sim} → row {row}, runde {k}: öffne" for row in range(3)]
                steps = [k, k + 1, k + 2]
                starts = [k == 0, False, True]
                x = np.zeros((3, DIM), np.float32)
                x[:, 0] = codes
                for c, e, t, i, s, f in zip(
                    codes, ids, tasks, instructions, steps, starts, strict=True
                ):
                    seen[c] = (e, t, i, s, f)
                barrier.wait(timeout=20)  # both sims send at once: one batch can take both
                actions = client.infer(
                    {"x": x}, ids, steps=steps, starts=starts, tasks=tasks,
                    instructions=instructions,
                )  # fmt: skip
                np.testing.assert_array_equal(actions[:, 0, 0], codes)
                assert client.last_infos is not None
                assert [i["code"] for i in client.last_infos] == codes
                assert [i["task"] for i in client.last_infos] == tasks
                assert [i["instruction"] for i in client.last_infos] == instructions
    except BaseException as exc:
        errors.append(exc)
        barrier.abort()


def _check_rows(batch: Batch, seen: dict[float, tuple[str, str, str, int, bool]]) -> None:
    assert batch.steps.dtype == np.int64 and batch.starts.dtype == np.bool_
    for row, code in enumerate(batch.obs["x"][:, 0].tolist()):
        episode, task, instruction, step, start = seen[code]
        assert batch.episode_ids[row] == episode
        assert batch.tasks[row] == task
        assert batch.instructions[row] == instruction
        assert int(batch.steps[row]) == step
        assert bool(batch.starts[row]) == start


def test_policy_sees_every_rows_task_and_instruction_in_batches_mixing_two_sims(
    settings: RedisSettings, clean: None
) -> None:
    policy = RecordingPolicy()
    seen: dict[float, tuple[str, str, str, int, bool]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)
    rounds = 6
    # a long window that closes as soon as both active clients are in
    with Served(settings, policy, max_wait_ms=500, max_batch=64):
        sims = [
            threading.Thread(target=_sender, args=(settings, s, rounds, barrier, seen, errors))
            for s in (1, 2)
        ]
        for t in sims:
            t.start()
        for t in sims:
            t.join(60)
    assert not errors, errors
    rows = [code for b in policy.batches for code in b.obs["x"][:, 0].tolist()]
    assert sorted(rows) == sorted(seen)  # every row served once
    for batch in policy.batches:
        _check_rows(batch, seen)
    mixed = [b for b in policy.batches if len({t.split("-")[1] for t in b.tasks}) == 2]
    assert mixed, [b.tasks for b in policy.batches]  # a batch held rows of both sims


def test_rows_split_at_max_batch_keep_their_context(settings: RedisSettings, clean: None) -> None:
    policy = RecordingPolicy()
    with (
        Served(settings, policy, max_wait_ms=1, max_batch=3),
        PolicyClient(POOL, settings, timeout_s=20) as client,
    ):
        x = np.zeros((7, DIM), np.float32)
        x[:, 0] = np.arange(7)
        tasks = [f"t{i}" for i in range(7)]
        instructions = [f"ïnstruction {i}" for i in range(7)]
        client.infer(
            {"x": x}, [f"e{i}" for i in range(7)], steps=np.arange(7) * 2,
            starts=np.arange(7) % 2 == 0, tasks=tasks, instructions=instructions,
        )  # fmt: skip
        assert client.last_infos is not None
        assert [i["instruction"] for i in client.last_infos] == instructions
    assert [b.rows for b in policy.batches] == [3, 3, 1]
    whole = Batch.concat(policy.batches)
    assert whole.tasks == tasks and whole.instructions == instructions
    assert whole.episode_ids == [f"e{i}" for i in range(7)]
    assert whole.steps.tolist() == [0, 2, 4, 6, 8, 10, 12]
    assert whole.starts.tolist() == [True, False, True, False, True, False, True]


def test_missing_instruction_is_refused(settings: RedisSettings, r: redis.Redis) -> None:
    policy = RecordingPolicy(needs_instruction=True)
    x = np.zeros((2, DIM), np.float32)
    with (
        Served(settings, policy, max_wait_ms=1) as worker,
        PolicyClient(POOL, settings, timeout_s=10) as client,
    ):
        assert client.spec is not None and client.spec.needs_instruction
        with pytest.raises(MissingInstruction, match=r"needs_instruction.*1 row"):
            client.infer({"x": x}, ["a", "b"], tasks="t", instructions=["open it", ""])
        assert client.requests_sent == 0  # refused before anything was sent
        client.infer({"x": x}, ["a", "b"], tasks="t", instructions="open the door")
        # a sim that skips the check (an old or hostile client) is refused by the worker
        client.spec = PolicySpec(
            name="recording", action_shape=(1, DIM),
            observations={"x": FieldSpec("float32", (DIM,))},
        )  # fmt: skip
        with pytest.raises(RemotePolicyError, match="MissingInstruction"):
            client.infer({"x": x}, ["a", "b"], tasks="t")
        assert worker.stats.dead_letters == 1
    assert [b.instructions for b in policy.batches] == [["open the door"] * 2]
    # and the unit runner's pre-flight check names the reason before any episode runs
    gym = pytest.importorskip("gymnasium")
    del gym
    from arena_eval.sim_worker.envs import make_env

    with make_env("CartPole-v1", 1) as env:
        spec = PolicySpec(name="vla", action_shape=(1, 1), needs_instruction=True)
        job = JobSpec(task="CartPole-v1", pool="vla", episodes=1)
        reason = spec_mismatch(env, spec, job)
        assert reason is not None and "needs_instruction" in reason and "CartPole-v1" in reason
        assert spec_mismatch(env, spec, job, instruction="balance the pole") is None


# --------------------------------------------------------------------------- Meta-World


def test_multitask_expert_serves_two_metaworld_tasks_in_one_batch(
    settings: RedisSettings, clean: None
) -> None:
    pytest.importorskip("metaworld")
    from arena_eval.policy_worker.builtins.metaworld_expert import MetaWorldExpertPolicy
    from arena_eval.sim_worker.envs import make_env

    class Recording(MetaWorldExpertPolicy):
        def __init__(self) -> None:
            super().__init__()  # no task: every Meta-World task with an expert
            self.batches: list[Batch] = []

        def infer(self, batch: Batch) -> InferResult:
            self.batches.append(batch)
            return super().infer(batch)

    tasks = ["metaworld/door-open-v3", "metaworld/drawer-close-v3"]
    policy = Recording()
    assert policy.spec().serves_task(tasks[0]) and policy.spec().serves_task(tasks[1])
    results: dict[str, list[EpisodeResult]] = {t: [] for t in tasks}
    errors: list[BaseException] = []
    ready = threading.Barrier(2)

    def sim(task: str) -> None:
        try:
            with PolicyClient(POOL, settings, timeout_s=30) as client, make_env(task, 2) as env:
                ready.wait(timeout=60)  # both envs built: the two rollouts overlap

                def sink(batch: list[EpisodeResult], _stats: RolloutStats) -> None:
                    results[task].extend(batch)

                run_episodes(
                    env, ChunkedPolicy(client, 2), job_id=task, indices=[0, 1],
                    seed_of=lambda i: i, on_episodes=sink, task=task,
                    instruction=f"do {task.split('/')[1]}",
                )  # fmt: skip
        except BaseException as exc:
            errors.append(exc)
            ready.abort()

    with Served(settings, policy, max_wait_ms=20, max_batch=64):
        threads = [threading.Thread(target=sim, args=(t,)) for t in tasks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
    for task in tasks:
        assert len(results[task]) == 2 and all(e.task == task for e in results[task])
        assert all(e.success for e in results[task]), results[task]  # the right expert drove it
    assert any(set(b.tasks) == set(tasks) for b in policy.batches)  # one batch, two tasks
    # each episode's rows: steps 0, 1, 2 ... in order, the start flag on step 0 only
    by_episode: dict[str, list[tuple[int, bool]]] = {}
    for batch in policy.batches:
        for e, s, f in zip(
            batch.episode_ids, batch.steps.tolist(), batch.starts.tolist(), strict=True
        ):
            by_episode.setdefault(e, []).append((s, f))
    assert len(by_episode) == 4
    for rows in by_episode.values():
        assert rows == [(i, i == 0) for i in range(len(rows))]


def test_multitask_expert_dispatches_each_row_on_its_task() -> None:
    pytest.importorskip("metaworld")
    from arena_eval.broker.spec import SpecMismatch
    from arena_eval.policy_worker.builtins.metaworld_expert import MetaWorldExpertPolicy

    multi = MetaWorldExpertPolicy()
    door = MetaWorldExpertPolicy(task="door-open-v3")
    drawer = MetaWorldExpertPolicy(task="metaworld/drawer-close-v3")
    states = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 39))
    tasks = [
        "metaworld/door-open-v3",
        "drawer-close-v3",
        "Metaworld/Door-Open-V3",
        "drawer-close-v3",
    ]
    out = multi.infer(Batch.of({"state": states}, tasks=tasks))
    for row, single in enumerate((door, drawer, door, drawer)):
        expected = single.infer(Batch.of({"state": states[row : row + 1]}))
        np.testing.assert_array_equal(out[row], expected[0])
    assert not np.array_equal(
        door.infer(Batch.of({"state": states})), drawer.infer(Batch.of({"state": states}))
    )  # the two experts differ, so a mix-up would show
    # a single-task expert still answers rows that carry no task; a multi-task one cannot
    door.infer(Batch.of({"state": states}))
    with pytest.raises(SpecMismatch, match="no task"):
        multi.infer(Batch.of({"state": states}))
    with pytest.raises(SpecMismatch, match="does not serve task 'metaworld/reach-v3'"):
        door.infer(Batch.of({"state": states[:1]}, tasks="metaworld/reach-v3"))
    pair = MetaWorldExpertPolicy(task="door-open-v3,drawer-close-v3")
    assert pair.spec().tasks == ("metaworld/door-open-v3", "metaworld/drawer-close-v3")
    assert multi.spec().tasks is not None and len(multi.spec().tasks) == 50
    assert multi.spec().incompatibility(pair.spec()) is not None  # different identities


class BadInfoPolicy(RecordingPolicy):
    """Returns info dicts the codec cannot carry (a set) for rows whose code is negative."""

    def infer(self, batch: Batch) -> InferResult:
        actions = batch.obs["x"][:, None, :].astype(np.float32)
        return actions, [{"bad": {1}} if c < 0 else {"ok": float(c)} for c in batch.obs["x"][:, 0]]


def test_info_dicts_the_codec_cannot_carry_fail_only_their_request(
    settings: RedisSettings, clean: None
) -> None:
    with (
        Served(settings, BadInfoPolicy(), max_wait_ms=1) as worker,
        PolicyClient(POOL, settings, timeout_s=10) as client,
    ):
        with pytest.raises(RemotePolicyError, match="could not be encoded"):
            client.infer({"x": -np.ones((1, DIM), np.float32)}, ["a"])
        actions = client.infer({"x": np.ones((2, DIM), np.float32)}, ["a", "b"])
        assert actions.shape == (2, 1, DIM) and client.last_infos == [{"ok": 1.0}] * 2
        assert worker.stats.dead_letters == 1
