"""A machine without OpenGL: the demo runs, and only a camera asks for a GL library.

GL is hidden the way a fresh machine lacks it: in a private mount namespace
(``unshare -m``, so root) every libOSMesa*, libEGL* and libGL.so* file is
bind-mounted over with /dev/null, so loading one fails, and ``MUJOCO_GL`` is unset.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arena_eval.broker.settings import RedisSettings
from tests.gl_probe import gl_problem
from tests.worker_procs import REPO, child_env

pytest.importorskip("metaworld")

_HIDDEN = re.compile(r"^lib(OSMesa|EGL|GL\.so)")
_LOADS = "import ctypes, sys; ctypes.CDLL(sys.argv[1])"


def _gl_files() -> list[str]:
    """Every libOSMesa*, libEGL*, libGL.so* file in the linker's directories."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    dirs = {os.path.dirname(line.split("=>")[-1].strip()) for line in out.splitlines()[1:]}
    files = {
        os.path.realpath(os.path.join(d, name))
        for d in dirs
        if os.path.isdir(d)
        for name in os.listdir(d)
        if _HIDDEN.match(name)
    }
    return sorted(f for f in files if os.path.isfile(f))


def _without_gl(
    argv: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a mount namespace where no GL library loads (checked first)."""
    if os.geteuid() != 0:
        pytest.skip("hiding GL libraries needs root (unshare -m and bind mounts); CI runs as root")
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) from util-linux to hide the GL libraries")
    files = _gl_files()
    if not files:
        pytest.skip("no GL library installed: nothing to hide")
    mounts = "".join(f"mount --bind /dev/null {shlex.quote(f)} && " for f in files)
    probe = "! " + shlex.join([sys.executable, "-c", _LOADS, files[0]]) + " 2>/dev/null"
    script = f"{mounts}{probe} && exec {shlex.join(argv)}"
    env = {k: v for k, v in env.items() if k != "MUJOCO_GL"}
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_demo_runs_without_any_gl_library(settings: RedisSettings, tmp_path: Path) -> None:
    env = child_env(settings, ARENA_HOME=str(tmp_path / "home"))
    if not os.environ.get("ARENA_TEST_REDIS_URL"):
        env.pop("ARENA_REDIS_URL")  # the README path: the embedded server
    argv = [sys.executable, "-m", "arena_eval.cli", "demo", "--episodes", "2"]
    argv += ["--sim-workers", "1", "--num-envs", "1"]
    out = _without_gl(argv, env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    words = " ".join(out.stdout.split())
    assert "completed: 6 episodes" in words  # the demo's suite: 2 episodes of each of 3 tasks
    assert "suite score" in words and "metaworld/drawer-open-v3" in words


def test_camera_without_gl_names_the_package_to_install(settings: RedisSettings) -> None:
    code = (
        "from arena_eval.sim_worker.envs import make_env\n"
        "make_env('metaworld/door-open-v3', 1, camera='corner')\n"
    )
    out = _without_gl([sys.executable, "-c", code], child_env(settings), timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "GLUnavailable" in last, out.stderr[-3000:]
    assert "apt-get install libosmesa6" in last
    assert "MUJOCO_GL=egl" in last


def test_camera_with_mujoco_gl_unset_picks_a_backend_and_renders(settings: RedisSettings) -> None:
    problem = gl_problem()
    if problem is not None:
        pytest.skip(problem)  # nothing can render here; the tests above cover that case
    code = (
        "import os\n"
        "from arena_eval.sim_worker.envs import make_env\n"
        "env = make_env('metaworld/door-open-v3', 1, camera='corner', image_size=32)\n"
        "obs = env.reset([0], [0])\n"
        "frame = obs['corner_rgb']\n"
        "print(os.environ['MUJOCO_GL'], frame.shape, int(frame.max()), sep='|')\n"
    )
    env = {k: v for k, v in child_env(settings).items() if k != "MUJOCO_GL"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    backend, shape, peak = out.stdout.strip().split("|")
    assert backend in ("osmesa", "egl")
    assert shape == "(1, 32, 32, 3)" and int(peak) > 0  # a real frame, not zeros
