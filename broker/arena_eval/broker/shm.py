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

Hostile neighbours: every slot file is opened through ``shm_trust.open_trusted``
(no blocking, no links, ours alone), so a planted FIFO, symlink or another user's
file is skipped. Writers create with ``O_EXCL`` under an unguessable name, so
nothing planted is ever reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import re
import secrets
import struct
from collections import OrderedDict
from dataclasses import dataclass

from arena_eval.broker.codec import DEFAULT_MAX_MESSAGE_BYTES
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.shm_trust import (
    CREATE_PRIVATE,
    SHM_DIR,
    UntrustedFile,
    available,
    note_untrusted,
    open_trusted,
)

_SLOT_PREFIX = "arena-eval-slot-"
#: ``arena-eval-slot-<pid>-<owner>-<index>-<token>``; the token makes the name unguessable.
_SLOT_NAME = re.compile(
    r"arena-eval-slot-(?P<pid>[0-9]{1,10})-(?P<owner>[A-Za-z0-9_.-]{1,128})"
    r"-(?P<index>[0-9]{1,6})(?:-(?P<token>[0-9a-f]{16}))?"
)
_UNSAFE_OWNER = re.compile(r"[^A-Za-z0-9_.-]")
_MAGIC = b"AESLOT01"
_HEADER = struct.Struct("<8sQQ")  # magic, generation, payload length
HEADER_BYTES = 64  # payload starts cache-line aligned
#: Largest slot file a reader maps: a writer grows to 1.5x its largest message.
MAX_SLOT_BYTES = 2 * DEFAULT_MAX_MESSAGE_BYTES + HEADER_BYTES


class ShmError(ArenaEvalError):
    """A shared-memory ticket could not be resolved (gone, stale or not on this host)."""


class UntrustedSlot(ShmError):
    """A file in the shm directory is not one this user's arena-eval wrote (planted?)."""


def slot_owner(client_id: str) -> str:
    """The owner component of a slot name for ``client_id`` (file-name safe, bounded)."""
    return _UNSAFE_OWNER.sub("_", client_id)[:128] or "_"


def _check_slot_name(name: str) -> re.Match[str]:
    match = _SLOT_NAME.fullmatch(name)
    if match is None or ".." in name:
        raise ShmError(
            f"{name[:200]!r} is not an arena-eval slot name; "
            "the request was not written by an arena-eval client on this host"
        )
    return match


@dataclass(frozen=True)
class Ticket:
    name: str
    generation: int
    length: int

    def to_wire(self) -> bytes:
        return f"{self.name}|{self.generation}|{self.length}".encode()

    @property
    def owner(self) -> str:
        """The slot-name component of the client that wrote it (see ``slot_owner``)."""
        return _check_slot_name(self.name)["owner"]

    @classmethod
    def from_wire(cls, raw: bytes, client: str | None = None) -> Ticket:
        """Parse a ticket; with ``client``, refuse a slot that client did not write."""
        try:
            name, gen, length = raw.decode().split("|")
            ticket = cls(name, int(gen), int(length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ShmError(f"malformed shared-memory ticket {raw[:80]!r}: {exc}") from None
        _check_slot_name(name)
        if not (0 < ticket.length <= DEFAULT_MAX_MESSAGE_BYTES and ticket.generation > 0):
            raise ShmError(
                f"shared-memory ticket {raw[:80]!r} has an impossible size or generation"
            )
        if client is not None and ticket.owner != slot_owner(client):
            raise ShmError(f"shared-memory slot {name} was not written by client {client!r}")
        return ticket


class SlotWriter:
    """One reusable slot file owned by a client; grows as needed, unlinked on close."""

    def __init__(self, owner: str, index: int) -> None:
        self._fd, self.name = self._create(
            f"{_SLOT_PREFIX}{os.getpid()}-{slot_owner(owner)}-{index}"
        )
        self.path = SHM_DIR / self.name
        self._map: mmap.mmap | None = None
        self._capacity = 0
        self._generation = 0

    @staticmethod
    def _create(stem: str) -> tuple[int, str]:
        """A new private file under an unguessable name, locked, and still linked at its name.

        The lock is held for the slot's life: a sweeper that can take it knows we are
        gone, even from another PID namespace (containers sharing /dev/shm). A sweeper
        may win the lock in the instant after creation and unlink the file; then retry.
        """
        for _ in range(8):
            name = f"{stem}-{secrets.token_hex(8)}"
            path = SHM_DIR / name
            try:
                fd = os.open(path, os.O_RDWR | CREATE_PRIVATE, 0o600)
            except FileExistsError:
                continue  # planted under our name: never reuse it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    return fd, name
            except OSError:
                pass  # a sweeper holds it, or already unlinked it
            os.close(fd)
        raise ShmError(f"cannot create a shared-memory slot in {SHM_DIR}; is it full?")

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
            _check_slot_name(name)
            try:
                fd = open_trusted(SHM_DIR / name, max_bytes=MAX_SLOT_BYTES)
            except FileNotFoundError:
                self._maps.pop(name, None)
                raise ShmError(f"shared-memory slot {name} is gone (its client exited)") from None
            except UntrustedFile as exc:
                self._maps.pop(name, None)
                note_untrusted(exc)
                raise UntrustedSlot(str(exc)) from None
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
    """Remove slot files whose writer is gone (nobody holds their lock); return how many.

    Only files that pass ``open_trusted`` are touched: a planted FIFO, symlink or
    another user's file is skipped, never opened blocking, followed or deleted.
    """
    if not available():
        return 0
    removed = 0
    for path in SHM_DIR.glob(f"{_SLOT_PREFIX}*"):
        if _SLOT_NAME.fullmatch(path.name) is None:
            continue
        try:
            fd = open_trusted(path, max_bytes=MAX_SLOT_BYTES)
        except UntrustedFile as exc:
            note_untrusted(exc)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer holds it
        else:  # unlink only the file we locked, not whatever the name points to now
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    path.unlink()
                    removed += 1
        finally:
            os.close(fd)
    return removed
