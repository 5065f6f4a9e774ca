"""Hostile neighbours in /dev/shm: planted FIFOs, symlinks and other users' files.

Every local user can create files in ``/dev/shm``. A FIFO under a slot name used
to hang every policy worker of the host in a blocking ``open``; a symlink was
followed; another user's file was mapped, served and even deleted by a root
worker. These tests plant each of them where the code looks and check that it
is skipped. A hang fails the test through ``pytest-timeout`` instead of stalling CI.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from arena_eval.broker import codec, shm, shm_trust
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import live_workers
from arena_eval.broker.settings import RedisSettings
from arena_eval.sim_worker.client import PolicyClient
from tests.policies_for_tests import DIM, expected_actions
from tests.worker_procs import REPO, procs, wait_until

NOBODY = 65534
as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="planting a file owned by another user needs root (CI runs as root)"
)
pytestmark = [
    pytest.mark.skipif(not shm_trust.available(), reason="no usable shm directory on this machine"),
    pytest.mark.timeout(60),
]


def slot_like_name(tag: str) -> str:
    """A name that passes the slot-name pattern, so only the fstat checks stand in the way."""
    return f"arena-eval-slot-1-{tag}{secrets.token_hex(4)}-0-{secrets.token_hex(8)}"


def slot_bytes(generation: int, payload: bytes) -> bytes:
    """A well-formed slot file: only where it came from is wrong."""
    header = bytearray(shm.HEADER_BYTES)
    shm._HEADER.pack_into(header, 0, shm._MAGIC, generation, len(payload))
    return bytes(header) + payload


PAYLOAD = b"secret observation"


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A FIFO, symlinks (to a FIFO and to a readable file), another user's file and a
    group-writable file, planted in the directory the workers scan; removed afterwards."""
    outside_fifo = tmp_path / "fifo"
    os.mkfifo(outside_fifo)
    outside_file = tmp_path / "target"
    outside_file.write_bytes(slot_bytes(1, PAYLOAD))
    things: dict[str, Path] = {
        "fifo": shm_trust.SHM_DIR / slot_like_name("fifo"),
        "plain-fifo": shm_trust.SHM_DIR / f"arena-eval-slot-x{secrets.token_hex(4)}",
        "symlink-to-fifo": shm_trust.SHM_DIR / slot_like_name("lnfifo"),
        "symlink-to-file": shm_trust.SHM_DIR / slot_like_name("lnfile"),
        "group-writable": shm_trust.SHM_DIR / slot_like_name("gw"),
    }
    os.mkfifo(things["fifo"], 0o666)
    os.mkfifo(things["plain-fifo"], 0o666)
    things["symlink-to-fifo"].symlink_to(outside_fifo)
    things["symlink-to-file"].symlink_to(outside_file)
    things["group-writable"].write_bytes(slot_bytes(1, PAYLOAD))
    os.chmod(things["group-writable"], 0o664)
    if os.geteuid() == 0:
        things["other-user"] = shm_trust.SHM_DIR / slot_like_name("nobody")
        things["other-user"].write_bytes(slot_bytes(1, PAYLOAD))
        for name in ("fifo", "plain-fifo", "other-user"):
            os.chown(things[name], NOBODY, NOBODY)
    try:
        yield things
    finally:
        for path in things.values():
            path.unlink(missing_ok=True)


def test_sweep_skips_planted_files_and_still_removes_orphans(planted: dict[str, Path]) -> None:
    code = (
        "import time; from arena_eval.broker import shm; "
        "w = shm.SlotWriter('orphan', 0); print(w.name, flush=True)"
    )
    orphan = subprocess.run(  # exits without closing: its slot is an orphan
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    ).stdout.strip()
    assert (shm_trust.SHM_DIR / orphan).exists()
    shm.sweep_orphans()  # hung on the FIFOs before
    assert not (shm_trust.SHM_DIR / orphan).exists()
    for what, path in planted.items():
        assert os.path.lexists(path), f"the sweep deleted the planted {what}"


def test_reader_refuses_each_planted_file(planted: dict[str, Path]) -> None:
    reader = shm.SlotReader()
    for what, path in planted.items():
        ticket = shm.Ticket(path.name, 1, len(PAYLOAD))
        with pytest.raises(shm.ShmError) as info:
            reader.view(ticket)
        assert path.name in str(info.value), what
        assert path.name not in reader._maps


@as_root
def test_other_users_file_is_named_as_such(planted: dict[str, Path]) -> None:
    ticket = shm.Ticket(planted["other-user"].name, 1, len(PAYLOAD))
    with pytest.raises(shm.UntrustedSlot, match=f"owned by uid {NOBODY}, not by us"):
        shm.SlotReader().view(ticket)


@pytest.mark.parametrize(
    "raw",
    [
        b"../../etc/passwd|1|10",
        b"arena-eval-slot-x|1|10",
        b"arena-eval-slot-1-a/b-0|1|10",
        b"arena-eval-slot-1-..-0-0123456789abcdef|1|10",
        b"arena-eval.host-id|1|10",
        b"arena-eval-slot-1-ok-0-0123456789abcdef|0|10",
        b"arena-eval-slot-1-ok-0-0123456789abcdef|1|-5",
    ],
)
def test_ticket_naming_a_non_slot_file_is_refused(raw: bytes) -> None:
    with pytest.raises(shm.ShmError, match=r"not an arena-eval slot name|impossible size"):
        shm.Ticket.from_wire(raw)


def test_ticket_is_bound_to_the_client_that_wrote_the_slot() -> None:
    writer = shm.SlotWriter("host-123-abcdef12", 0)
    try:
        parts, n = codec.dumps_parts({"x": np.zeros(4, np.float32)}, compression="off")
        raw = writer.write(parts, n).to_wire()
        assert shm.Ticket.from_wire(raw, client="host-123-abcdef12").name == writer.name
        with pytest.raises(shm.ShmError, match="not written by client 'host-999-00000000'"):
            shm.Ticket.from_wire(raw, client="host-999-00000000")
    finally:
        writer.close()


def test_writer_creates_private_files_and_never_follows_a_planted_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    token = "ab" * 8
    stem = f"arena-eval-slot-{os.getpid()}-planted-0"
    traps = [shm_trust.SHM_DIR / n for n in (stem, f"{stem}-{token}")]  # old and new name shapes
    for trap in traps:
        trap.symlink_to(victim)
    tokens = iter([token])
    real_token_hex = secrets.token_hex
    monkeypatch.setattr(shm.secrets, "token_hex", lambda n: next(tokens, None) or real_token_hex(n))
    writer = None
    try:
        writer = shm.SlotWriter("planted", 0)
        assert writer.path not in traps
        st = os.lstat(writer.path)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()
    finally:
        if writer is not None:
            writer.close()
        for trap in traps:
            trap.unlink(missing_ok=True)
    assert victim.read_text() == "keep me"


def test_host_id_survives_planted_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shm_dir = tmp_path / "shm"
    shm_dir.mkdir()
    shm_dir.chmod(0o1777)  # like /dev/shm
    monkeypatch.setattr(shm_trust, "SHM_DIR", shm_dir)
    monkeypatch.setattr(shm_trust, "_host_id", None)
    for name in ("arena-eval.host-id", f"arena-eval-{os.geteuid()}.host-id"):
        os.mkfifo(shm_dir / name, 0o666)
        if os.geteuid() == 0:
            os.chown(shm_dir / name, NOBODY, NOBODY)
    first = shm_trust.host_id()  # hung on the FIFO before
    assert len(first) == 16 and not first.startswith("no-shm")
    monkeypatch.setattr(shm_trust, "_host_id", None)
    assert shm_trust.host_id() == first  # every process of this user finds the same id


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_worker_serves_with_hostile_files_planted_in_shm(
    planted: dict[str, Path], settings: RedisSettings, r: redis.Redis, tmp_path: Path
) -> None:
    """The issue's done-when: a worker starting with all of them planted still serves."""
    pool = "hostile"
    with procs(settings, tmp_path) as p:
        worker = p.cli(
            "policy", "serve", "--pool", pool, "--policy", "tests.policies_for_tests:EchoPolicy",
            name="worker",
        )  # fmt: skip
        keys = Keys(settings.prefix)
        wait_until(lambda: live_workers(r, keys, pool), 60, "the worker to register", [worker])
        x = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM)
        with PolicyClient(pool, settings, timeout_s=30, transport="shm") as client:
            actions = client.infer({"x": x}, [0, 1, 2])  # through a slot in the planted dir
        np.testing.assert_array_equal(actions, expected_actions(x))
        assert worker.poll() is None, p.log_of(worker)
    for path in planted.values():
        assert os.path.lexists(path)
