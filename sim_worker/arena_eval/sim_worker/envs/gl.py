"""OpenGL for Meta-World cameras: chosen and checked only when a camera is asked for.

Why here and not at import: ``import mujoco`` with ``MUJOCO_GL=osmesa`` (or ``egl``) loads
PyOpenGL and that backend's system library at once, so a worker that only steps physics would
need libOSMesa, and without it fails with ``'NoneType' object has no attribute 'glGetError'``.
With ``MUJOCO_GL`` unset, mujoco picks glfw, whose bundled library loads with no GL on the
machine, and gymnasium's renderer reads ``MUJOCO_GL`` only when it draws its first frame.

So :func:`prepare` runs before a Meta-World task is built: with a camera it picks the backend
(``MUJOCO_GL`` if set, else ``egl`` where an NVIDIA device is visible, else ``osmesa``), sets
``MUJOCO_GL`` for the renderer, and loads the backend's libraries with ctypes (the names
PyOpenGL loads) so that a missing one is one clear error naming the package to install, before
any frame. Without a camera it only checks a ``MUJOCO_GL`` the user set, which mujoco's import
would otherwise turn into that same cryptic error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

from arena_eval.sim_worker.envs.errors import GLUnavailable

#: Libraries PyOpenGL loads per backend: every group needs one name that loads.
_LIBRARIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "osmesa": (("OSMesa",),),
    "egl": (("EGL",), ("OpenGL", "GL")),
}

_FIX = {
    "osmesa": (
        "install it with `apt-get install libosmesa6` (Debian/Ubuntu) for CPU rendering, "
        "or set MUJOCO_GL=egl on a machine with a GPU driver"
    ),
    "egl": (
        "install the GPU driver's EGL library (e.g. `apt-get install libegl1`), or set "
        "MUJOCO_GL=osmesa and `apt-get install libosmesa6` (Debian/Ubuntu) for CPU rendering"
    ),
}

_checked: set[str] = set()


def default_mujoco_gl() -> str:
    """``egl`` where an NVIDIA GPU is visible (headless GPU rendering), else ``osmesa`` (CPU)."""
    return "egl" if glob.glob("/dev/nvidia[0-9]*") else "osmesa"


def prepare(camera: str | None) -> None:
    """Make rendering work for ``camera``, or raise :class:`GLUnavailable` saying what to fix.

    Call it before anything imports mujoco. Without a camera, nothing needs OpenGL: only a
    ``MUJOCO_GL`` set to a backend that cannot load is reported (mujoco's import would fail).
    """
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if camera is None:
        if chosen in _LIBRARIES and "mujoco" not in sys.modules:
            _check(
                chosen, f"MUJOCO_GL={chosen} is set", "unset MUJOCO_GL (no camera needs no GL), or"
            )
        return
    backend = chosen or default_mujoco_gl()
    if backend in _LIBRARIES:
        _check(backend, f"camera {camera!r} needs OpenGL (MUJOCO_GL={backend})", "")
    if not chosen:
        os.environ["MUJOCO_GL"] = backend


def _check(backend: str, why: str, first_fix: str) -> None:
    if backend in _checked:
        return
    for names in _LIBRARIES[backend]:
        problem = _load_any(names)
        if problem is not None:
            fix = f"{first_fix} {_FIX[backend]}".strip()
            raise GLUnavailable(f"{why}, but the {backend} backend cannot load {problem}: {fix}")
    _checked.add(backend)


def _load_any(names: tuple[str, ...]) -> str | None:
    """None if one of ``names`` loads, else what went wrong with the first one."""
    problem = ""
    for name in names:
        for candidate in (ctypes.util.find_library(name), f"lib{name}.so"):
            if candidate is None:
                continue
            try:
                ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                problem = problem or f"lib{name} ({exc})"
                continue
            return None
        problem = problem or f"lib{name} (not installed)"
    return problem
