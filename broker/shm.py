"""Same-host shared memory for large observation payloads.

Measured on this machine class (``docs/benchmarks.md``): pushing a 7.9 MB GR1
request through Redis costs several copies (client -> Redis -> listpack ->
worker) and makes the broker path 3x slower than a direct ZeroMQ socket.
When the sim and a policy worker share a host, the sim instead writes the
encoded message once into a reusable slot file in ``/dev/shm`` and sends only
a ~100-byte *ticket* through Redis. The worker maps the slot and decodes it
without copying.

Safety: a slot carries a generation counter. The ticket names the generation
it was written for; the reader checks it before *and after* using the data
(a seqlock), so a slot reused by its writer after a timeout can never be
served as if it were the old request.

``host_id`` identifies a ``/dev/shm`` namespace, not a hostname: two
containers on one machine usually do not share ``/dev/shm``, and must not
exchange tickets.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from arena_eval.broker.errors import ArenaEvalError

SHM_DIR = Path(os.environ.get("ARENA_SHM_DIR", "/dev/shm"))
_HOST_ID_FILE = "arena-eval.host-id"
_SLOT_PREFIX = "arena-eval-slot-"
_MAGIC = b"AESLOT01"
_HEADER = struct.Struct("<8sQQ")  # magic, generation, payload length
HEADER_BYTES = 64  # payload starts cache-line aligned


class ShmError(ArenaEvalError):
    """A shared-memory ticket could not be resolved (gone, stale or not on this host)."""


_host_id: str | None = None


def available() -> bool:
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def host_id() -> str:
    """A stable id of this ``/dev/shm`` namespace (created on first use)."""
    global _host_id
    if _host_id is not None:
        return _host_id
    if not available():
        _host_id = "no-shm-" + uuid.uuid4().hex[:12]
        return _host_id
    path = SHM_DIR / _HOST_ID_FILE
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, uuid.uuid4().hex[:16].encode())
        finally:
            os.close(fd)
    for _ in range(50):  # another process may be mid-write
        text = path.read_text().strip()
        if text:
            _host_id = text
            return text
    raise ShmError(f"{path} is empty; remove it and retry")


@dataclass(frozen=True)
class Ticket:
    name: str
    generation: int
    length: int

    def to_wire(self) -> bytes:
        return f"{self.name}|{self.generation}|{self.length}".encode()

    @classmethod
    def from_wire(cls, raw: bytes) -> Ticket:
        try:
            name, gen, length = raw.decode().split("|")
            if not name.startswith(_SLOT_PREFIX) or "/" in name:
                raise ValueError("not a slot name")
            return cls(name, int(gen), int(length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ShmError(f"malformed shared-memory ticket {raw[:80]!r}: {exc}") from None


class SlotWriter:
    """One reusable slot file owned by a client; grows as needed, unlinked on close."""

    def __init__(self, owner: str, index: int) -> None:
        self.name = f"{_SLOT_PREFIX}{os.getpid()}-{owner}-{index}"
        self.path = SHM_DIR / self.name
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        # Held for the slot's life: a sweeper that can take the lock knows we are gone,
        # even from another PID namespace (containers sharing /dev/shm).
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._map: mmap.mmap | None = None
        self._capacity = 0
        self._generation = 0

    def _ensure(self, size: int) -> mmap.mmap:
        need = HEADER_BYTES + size
        if self._map is None or need > self._capacity:
            capacity = max(need, int(self._capacity * 1.5), 1 << 20)
            os.ftruncate(self._fd, capacity)
            if self._map is not None:
                self._map.close()
            self._map = mmap.mmap(self._fd, capacity)
            self._capacity = capacity
        return self._map

    def write(self, buffers: list[bytes | bytearray | memoryview], length: int) -> Ticket:
        """Copy ``buffers`` (one encoded message) into the slot; return its ticket."""
        mm = self._ensure(length)
        self._generation += 1
        # Invalidate first, so a reader never sees the new length with the old generation.
        _HEADER.pack_into(mm, 0, _MAGIC, 0, 0)
        view = memoryview(mm)
        pos = HEADER_BYTES
        try:
            for buf in buffers:
                n = memoryview(buf).nbytes
                view[pos : pos + n] = memoryview(buf).cast("B")
                pos += n
        finally:
            view.release()
        if pos - HEADER_BYTES != length:
            raise ShmError(f"slot write of {pos - HEADER_BYTES} bytes, expected {length}")
        _HEADER.pack_into(mm, 0, _MAGIC, self._generation, length)
        return Ticket(self.name, self._generation, length)

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class SlotReader:
    """Maps slot files by name (an LRU cache) and hands out zero-copy views of payloads.

    The cache is bounded, and slots found gone are forgotten, so a long-lived
    worker does not keep the memory of every client it ever served mapped.
    """

    MAX_MAPS = 64

    def __init__(self) -> None:
        self._maps: OrderedDict[str, mmap.mmap] = OrderedDict()

    def _map(self, name: str, need: int) -> mmap.mmap:
        mm = self._maps.get(name)
        if mm is not None:
            self._maps.move_to_end(name)
        if mm is None or len(mm) < need:
            try:
                fd = os.open(SHM_DIR / name, os.O_RDONLY)
            except FileNotFoundError:
                self._maps.pop(name, None)
                raise ShmError(f"shared-memory slot {name} is gone (its client exited)") from None
            try:
                size = os.fstat(fd).st_size
                if size < need:
                    raise ShmError(f"slot {name} holds {size} bytes, ticket needs {need}")
                mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            self._maps[name] = mm  # an older, smaller map is freed once no array uses it
            self._maps.move_to_end(name)
            while len(self._maps) > self.MAX_MAPS:
                self._maps.popitem(last=False)  # unmapped once no decoded array uses it
        return mm

    def view(self, ticket: Ticket) -> memoryview:
        """The payload of ``ticket``; raises ShmError if the slot moved on."""
        mm = self._map(ticket.name, HEADER_BYTES + ticket.length)
        magic, generation, length = _HEADER.unpack_from(mm, 0)
        if magic != _MAGIC or generation != ticket.generation or length != ticket.length:
            raise ShmError(
                f"stale shared-memory ticket for {ticket.name} "
                f"(generation {ticket.generation}, slot has {generation})"
            )
        return memoryview(mm)[HEADER_BYTES : HEADER_BYTES + ticket.length]

    def still_valid(self, ticket: Ticket) -> bool:
        """Seqlock check after use: True if the slot was not rewritten meanwhile."""
        mm = self._maps.get(ticket.name)
        if mm is None:
            return False
        _magic, generation, _length = _HEADER.unpack_from(mm, 0)
        return bool(generation == ticket.generation)


def sweep_orphans() -> int:
    """Remove slot files whose writer is gone (nobody holds their lock); return how many."""
    if not available():
        return 0
    removed = 0
    for path in SHM_DIR.glob(f"{_SLOT_PREFIX}*"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer holds it
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        finally:
            os.close(fd)
    return removed
