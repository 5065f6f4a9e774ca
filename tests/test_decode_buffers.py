"""lz4 arrays decompress into the policy worker's reused buffers, and no held array is overwritten.

The codec half runs in-process; the worker half sends lz4-compressed requests
through a real Redis to a real ``PolicyWorker``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from arena_eval.broker import lz4_into
from arena_eval.broker.arrays import ALIGN, LZ4_CHUNK
from arena_eval.broker.codec import CodecError, dumps, loads
from arena_eval.broker.settings import RedisSettings
from arena_eval.policy_worker.decode_buffers import DecodeBuffers
from arena_eval.policy_worker.policy import Batch
from arena_eval.policy_worker.server import PolicyWorker
from arena_eval.sim_worker.client import PolicyClient
from tests.policies_for_tests import DIM, EchoPolicy, expected_actions
from tests.test_codec import BAD_DESCRIPTORS, one_array

POOL = "echo"

needs_lz4_into = pytest.mark.skipif(not lz4_into.available(), reason="no LZ4_decompress_safe")


@needs_lz4_into
def test_lz4_arrays_decode_into_aligned_reused_buffers() -> None:
    arr = (np.arange(3 * LZ4_CHUNK // 4 + 5, dtype=np.int32) // 100).reshape(-1, 1)
    msg = dumps({"a": arr, "small": np.arange(3.0)}, compression="always")
    buffers = DecodeBuffers()
    out = loads(msg, buffers=buffers)
    np.testing.assert_array_equal(out["a"], arr)
    np.testing.assert_array_equal(out["small"], np.arange(3.0))
    assert out["a"].ctypes.data % ALIGN == 0 and not out["a"].flags.writeable
    assert buffers.allocated == 2 and buffers.reused == 0
    del out
    again = loads(msg, buffers=buffers)  # nothing holds the first arrays: same memory
    np.testing.assert_array_equal(again["a"], arr)
    assert buffers.allocated == 2 and buffers.reused == 2


@needs_lz4_into
def test_a_held_array_keeps_its_buffer() -> None:
    buffers = DecodeBuffers()
    first = np.full(10_000, 7, np.uint16)
    held = loads(dumps(first, compression="always"), buffers=buffers)
    view_of_view = held.reshape(100, 100)[::2]
    del held  # a view of it still holds the buffer
    second = loads(dumps(np.full(10_000, 9, np.uint16), compression="always"), buffers=buffers)
    assert buffers.reused == 0 and buffers.allocated == 2
    assert (view_of_view == 7).all() and (second == 9).all()


def test_the_pool_drops_free_buffers_over_its_cap() -> None:
    buffers = DecodeBuffers(max_bytes=3000)
    a = buffers(1000)
    del a
    b = buffers(2000)  # a is free: dropped to stay under the cap
    assert buffers.held_bytes == 2000 + ALIGN and b.nbytes == 2000


@needs_lz4_into
@pytest.mark.parametrize(
    ("desc", "body", "needle"), BAD_DESCRIPTORS, ids=[c[2] for c in BAD_DESCRIPTORS]
)
def test_nonsense_descriptors_into_buffers(desc: bytes, body: bytes, needle: str) -> None:
    with pytest.raises(CodecError, match=needle):
        loads(one_array(desc, body), buffers=DecodeBuffers())


class HoldingEcho(EchoPolicy):
    """EchoPolicy that keeps every observation array it was given, uncopied."""

    def __init__(self) -> None:
        super().__init__(stall_s=0)
        self.held: list[np.ndarray] = []

    def infer(self, batch: Batch) -> np.ndarray:
        self.held.append(batch.obs["x"])
        return super().infer(batch)


def _serve(worker: PolicyWorker, sends: list[np.ndarray], settings: RedisSettings) -> None:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with PolicyClient(POOL, settings, timeout_s=20, compression="always") as client:
            for x in sends:
                np.testing.assert_array_equal(
                    client.infer({"x": x}, [0] * len(x)), expected_actions(x)
                )
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()


@needs_lz4_into
def test_a_held_observation_is_never_overwritten(settings: RedisSettings) -> None:
    sends = [np.full((3, DIM), float(i), np.float32) for i in range(6)]
    policy = HoldingEcho()
    worker = PolicyWorker(POOL, policy, settings, max_wait_ms=1.0)
    _serve(worker, sends, settings)
    assert len(policy.held) == len(sends)
    for held, sent in zip(policy.held, sends, strict=True):
        np.testing.assert_array_equal(held, sent)  # later requests did not write over it
    assert worker.decoder.buffers.allocated >= len(sends) and worker.decoder.buffers.reused == 0


@needs_lz4_into
def test_the_worker_reuses_its_decode_buffers(settings: RedisSettings) -> None:
    sends = [np.full((3, DIM), float(i), np.float32) for i in range(6)]
    worker = PolicyWorker(POOL, EchoPolicy(stall_s=0), settings, max_wait_ms=1.0)
    _serve(worker, sends, settings)
    assert worker.decoder.buffers.reused >= len(sends) - 2 and worker.decoder.buffers.allocated <= 2
