"""Same-host shared-memory slots: seqlock, cleanup of crashed writers, bounded reader cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from arena_eval.broker import codec, shm, shm_trust
from tests.worker_procs import REPO

pytestmark = pytest.mark.skipif(not shm_trust.available(), reason="no /dev/shm on this machine")


def test_write_read_and_stale_ticket() -> None:
    writer = shm.SlotWriter("t", 0)
    reader = shm.SlotReader()
    try:
        obs = {"x": np.arange(100_000, dtype=np.float32)}
        parts, n = codec.dumps_parts(obs, compression="off")
        ticket = writer.write(parts, n)
        view = reader.view(ticket)
        np.testing.assert_array_equal(codec.loads(view)["x"], obs["x"])
        assert reader.still_valid(ticket)
        writer.write(parts, n)  # the slot is reused: the old ticket must not be served
        assert not reader.still_valid(ticket)
        with pytest.raises(shm.ShmError, match="stale"):
            reader.view(ticket)
    finally:
        writer.close()


def test_sweep_removes_slots_of_dead_writers_only() -> None:
    live = shm.SlotWriter("live", 0)
    code = (
        "import time, sys; from arena_eval.broker import shm; "
        "w = shm.SlotWriter('doomed', 0); print(w.name, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        doomed = proc.stdout.readline().strip()
        assert (shm_trust.SHM_DIR / doomed).exists()
        shm.sweep_orphans()
        assert (shm_trust.SHM_DIR / doomed).exists()  # its writer is alive: kept
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        time.sleep(0.1)
        assert shm.sweep_orphans() >= 1
        assert not (shm_trust.SHM_DIR / doomed).exists()
        assert live.path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        live.close()


def test_reader_cache_is_bounded_and_forgets_gone_slots() -> None:
    reader = shm.SlotReader()
    parts, n = codec.dumps_parts({"x": np.zeros(10, np.uint8)}, compression="off")
    writers = [shm.SlotWriter("many", i) for i in range(shm.SlotReader.MAX_MAPS + 10)]
    try:
        for w in writers:
            reader.view(w.write(parts, n))
        assert len(reader._maps) == shm.SlotReader.MAX_MAPS
        gone = writers[-1]
        ticket = gone.write(parts, n)
        gone.close()
        reader._maps.pop(gone.name)  # as if never mapped: must reopen, and find it gone
        with pytest.raises(shm.ShmError, match="gone"):
            reader.view(ticket)
        assert gone.name not in reader._maps
    finally:
        for w in writers:
            w.close()
