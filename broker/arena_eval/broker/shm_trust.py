"""Files in the world-writable shm directory that we can trust, and this host's id.

Why a module of its own: ``/dev/shm`` is writable by every local user, who may
plant FIFOs (a blocking open never returns), symlinks (to files we must not read
or truncate) or files of their own under our names. Every file the project opens
there goes through ``open_trusted``: ``O_NONBLOCK | O_NOFOLLOW``, then ``fstat``
must show a regular file owned by our effective uid, not writable by group or
others, with one link and a plausible size; anything else is skipped (and logged
once). The slot protocol (``broker/shm.py``) and the host id both rely on it.

``host_id`` identifies a ``/dev/shm`` namespace and a user, not a hostname: two
containers on one machine usually do not share ``/dev/shm``, and must not
exchange tickets; and a worker maps only slots of its own user, so clients of
another user must send their requests inline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import uuid
from pathlib import Path

from arena_eval.broker.errors import ArenaEvalError

log = logging.getLogger(__name__)

SHM_DIR = Path(os.environ.get("ARENA_SHM_DIR", "/dev/shm"))
_HOST_ID_BYTES = 64
_SAFE_OPEN = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags to create a new private file: never an existing (planted) one, never through a link.
CREATE_PRIVATE = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UntrustedFile(ArenaEvalError):
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


def open_trusted(path: Path, *, max_bytes: int, single_link: bool = True) -> int:
    """Open ``path`` read-only without blocking or following links, if we can trust it.

    Trusted means: a regular file owned by our effective uid, not writable by group
    or others, of at most ``max_bytes`` (and with one link, when ``single_link``).
    Raises FileNotFoundError if it is gone, UntrustedFile for anything else.
    """
    try:
        fd = os.open(path, _SAFE_OPEN)
    except FileNotFoundError:
        raise
    except OSError as exc:  # ELOOP: a symlink; EACCES, ENXIO: not ours or not a file
        raise UntrustedFile(f"{path} cannot be opened safely ({exc.strerror})") from None
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
    raise UntrustedFile(f"{path} {why}; arena-eval did not write it, so it is ignored")


def note_untrusted(exc: UntrustedFile) -> None:
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
    except UntrustedFile as exc:
        note_untrusted(exc)
        return None
    try:
        text = os.read(fd, _HOST_ID_BYTES).decode(errors="replace").strip()
    finally:
        os.close(fd)
    return text if re.fullmatch(r"[0-9a-f]{16}", text) else None


def _create_host_id(path: Path) -> None:
    """Write the id under a private temporary name, then link it in: never seen half-written."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | CREATE_PRIVATE, 0o644)
    try:
        os.write(fd, uuid.uuid4().hex[:16].encode())
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileExistsError):  # a racing process linked first
            os.link(tmp, path, follow_symlinks=False)
    finally:
        tmp.unlink()
