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

``host_id`` identifies a ``/dev/shm`` namespace and a user, not a hostname: two
containers on one machine usually do not share ``/dev/shm``, and must not
exchange tickets; and a worker maps only slots of its own user (below), so
clients of another user must send their requests inline.

Hostile neighbours: ``/dev/shm`` is writable by every local user, who may plant
FIFOs (a blocking open never returns), symlinks (to files we must not read or
truncate) or files of their own under our names. So every file here is opened
with ``O_NONBLOCK | O_NOFOLLOW``, and used only if ``fstat`` shows a regular
file owned by our effective uid, not writable by group or others, with one link
and a plausible size; anything else is skipped (and logged once). Writers create
with ``O_EXCL`` under an unguessable name, so nothing planted is ever reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import re
import secrets
import stat
import struct
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from arena_eval.broker.codec import DEFAULT_MAX_MESSAGE_BYTES
from arena_eval.broker.errors import ArenaEvalError

log = logging.getLogger(__name__)

SHM_DIR = Path(os.environ.get("ARENA_SHM_DIR", "/dev/shm"))
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
_HOST_ID_BYTES = 64
_SAFE_OPEN = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class ShmError(ArenaEvalError):
    """A shared-memory ticket could not be resolved (gone, stale or not on this host)."""


class UntrustedSlot(ShmError):
    """A file in the shm directory is not one this user's arena-eval wrote (planted?)."""


_host_id: str | None = None
_logged_untrusted: set[str] = set()


def available() -> bool:
    """The shm directory exists, is writable, and others cannot delete our files in it."""
    try:
        st = os.stat(SHM_DIR)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or not os.access(SHM_DIR, os.W_OK):
        return False
    world_writable = st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX
    return not world_writable and st.st_uid in (0, os.geteuid())


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


def open_trusted(path: Path, *, max_bytes: int, single_link: bool = True) -> int:
    """Open ``path`` read-only without blocking or following links, if we can trust it.

    Trusted means: a regular file owned by our effective uid, not writable by group
    or others, of at most ``max_bytes`` (and with one link, when ``single_link``).
    Raises FileNotFoundError if it is gone, UntrustedSlot for anything else.
    """
    try:
        fd = os.open(path, _SAFE_OPEN)
    except FileNotFoundError:
        raise
    except OSError as exc:  # ELOOP: a symlink; EACCES, ENXIO: not ours or not a file
        raise UntrustedSlot(f"{path} cannot be opened safely ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            why = "is not a regular file"
        elif st.st_uid != os.geteuid():
            why = f"is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"
        elif st.st_mode & 0o022:
            why = f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
        elif single_link and st.st_nlink != 1:
            why = f"has {st.st_nlink} links"
        elif st.st_size > max_bytes:
            why = f"holds {st.st_size} bytes, more than {max_bytes}"
        else:
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    raise UntrustedSlot(f"{path} {why}; arena-eval did not write it, so it is ignored")


def _note_untrusted(exc: UntrustedSlot) -> None:
    """Log a skipped file once per process (a planted file must not flood the log)."""
    text = str(exc)
    if text not in _logged_untrusted and len(_logged_untrusted) < 1000:
        _logged_untrusted.add(text)
        log.warning("skipping %s", text)


def host_id() -> str:
    """A stable id of this ``/dev/shm`` namespace and user (created on first use).

    The id lives in ``arena-eval-<uid>.host-id``; if another user planted something
    there, the next candidate name is used, so planting cannot block us.
    """
    global _host_id
    if _host_id is not None:
        return _host_id
    if not available():
        _host_id = "no-shm-" + uuid.uuid4().hex[:12]
        return _host_id
    candidates = [
        SHM_DIR / f"arena-eval-{os.geteuid()}{f'-{i}' if i else ''}.host-id" for i in range(8)
    ]
    for _ in range(3):  # a file we find absent may be created by a racing process
        for path in candidates:  # an existing id of ours wins over creating one
            if text := _read_host_id(path):
                _host_id = text
                return text
        for path in candidates:
            if not os.path.lexists(path):
                with contextlib.suppress(OSError):  # e.g. full; then shm stays off below
                    _create_host_id(path)
                break
    _host_id = "no-shm-" + uuid.uuid4().hex[:12]
    log.warning("no usable host-id file in %s; shared memory is off for this process", SHM_DIR)
    return _host_id


def _read_host_id(path: Path) -> str | None:
    try:
        fd = open_trusted(path, max_bytes=_HOST_ID_BYTES, single_link=False)
    except FileNotFoundError:
        return None
    except UntrustedSlot as exc:
        _note_untrusted(exc)
        return None
    try:
        text = os.read(fd, _HOST_ID_BYTES).decode(errors="replace").strip()
    finally:
        os.close(fd)
    return text if re.fullmatch(r"[0-9a-f]{16}", text) else None


def _create_host_id(path: Path) -> None:
    """Write the id under a private temporary name, then link it in: never seen half-written."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | _CREATE, 0o644)
    try:
        os.write(fd, uuid.uuid4().hex[:16].encode())
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileExistsError):  # a racing process linked first
            os.link(tmp, path, follow_symlinks=False)
    finally:
        tmp.unlink()


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
                fd = os.open(path, os.O_RDWR | _CREATE, 0o600)
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
            except UntrustedSlot as exc:
                self._maps.pop(name, None)
                _note_untrusted(exc)
                raise
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
        except UntrustedSlot as exc:
            _note_untrusted(exc)
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
