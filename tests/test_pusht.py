"""PushT: the env adapter, the heuristic policy, and a job whose frames go through shared memory.

Real gym-pusht (pymunk + pygame, no GL context), real Redis, and for the job a real policy
worker and sim worker in subprocesses. The shared-memory path is asserted on the streams
themselves: a request too large for the inline path goes to the pool's per-host stream as a
ticket, so the host stream's last generated id moves and the inline stream's never does
(entries are deleted once answered, but the ids a stream generated stay in XINFO).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from arena_eval.broker import jobs, pool, shm_trust
from arena_eval.broker.errors import ConfigError
from arena_eval.broker.jobs import JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.app import app
from arena_eval.policy_worker.builtins.pusht_heuristic import PushTHeuristicPolicy
from arena_eval.policy_worker.policy import Batch, check_actions
from arena_eval.sim_worker.envs.errors import UnknownTask
from arena_eval.sim_worker.envs.factory import make_env
from arena_eval.sim_worker.envs.pusht_env import INSTRUCTION
from arena_eval.sim_worker.envs.suites import instruction_for
from tests.pusht_probe import skip_without_pusht
from tests.worker_procs import REPO, procs, wait_until

pytest.importorskip("gym_pusht", reason="PushT needs the [pusht] extra (gym-pusht)")

POOL = "pusht"
FRAME = (96, 96, 3)


def test_pixels_observations_actions_and_seeded_resets() -> None:
    skip_without_pusht()
    with make_env("pusht/pixels", 2, seed=0) as env:
        spec = env.observation_spec()
        assert (spec["pixels"].dtype, spec["pixels"].shape) == ("uint8", FRAME)
        assert (spec["agent_pos"].dtype, spec["agent_pos"].shape) == ("float64", (2,))
        assert env.action_dim() == 2
        first = env.reset([0, 1], [7, 8])
        assert first["pixels"].shape == (2, *FRAME) and first["pixels"].dtype == np.uint8
        assert first["pixels"].std() > 0  # a drawn scene, not a blank frame
        result = None
        for _ in range(5):
            result = env.step(np.full((2, 2), 256.0))
        assert result is not None and "coverage" in result.metrics
        assert not np.array_equal(result.obs["pixels"][0], first["pixels"][0])
        again = env.reset([1, 0], [7, 8])  # seed 7 now on slot 1, after other episodes
        np.testing.assert_array_equal(again["pixels"][1], first["pixels"][0])
        np.testing.assert_array_equal(again["agent_pos"][0], first["agent_pos"][1])


def test_task_strings_state_and_sizes() -> None:
    skip_without_pusht()
    with make_env("pusht/state", 1) as env:
        assert env.observation_spec()["state"].shape == (5,)
    with make_env("pusht/pixels-32", 1, max_steps=3) as env:
        assert env.observation_spec()["pixels"].shape == (32, 32, 3)
        env.reset([0], [1])
        ends = [bool(env.step(np.full((1, 2), 100.0)).truncated[0]) for _ in range(3)]
        assert ends == [False, False, True]
    assert instruction_for("pusht/pixels") == instruction_for("pusht/state") == INSTRUCTION
    assert instruction_for("pusht/nope") == ""
    with pytest.raises(UnknownTask, match=r"pusht/pixels-<N>"):
        make_env("pusht/pixel", 1)
    with pytest.raises(ConfigError, match="no cameras"):
        make_env("pusht/pixels", 1, camera="top")


def test_heuristic_policy_moves_the_agent_toward_the_block() -> None:
    skip_without_pusht()
    policy = PushTHeuristicPolicy(obs="pixels")
    with make_env("pusht/pixels", 3, seed=0) as env:
        obs = env.reset([0, 1, 2], [0, 1, 2])
        policy.spec().check_observations(obs)
        actions = check_actions(policy.spec(), policy.infer(Batch.of(obs)), 3)
    assert actions.shape == (3, 8, 2) and actions.dtype == np.float32
    assert ((actions >= 0) & (actions <= 512)).all()
    # each chunk walks away from where the agent stands, toward its first target
    start = obs["agent_pos"]
    assert (np.linalg.norm(actions[:, -1] - start, axis=1) > 1.0).all()


def test_a_metaworld_node_never_imports_pusht() -> None:
    code = (
        "import sys\n"
        "from arena_eval.sim_worker.envs.registry import env_table\n"
        "from arena_eval.policy_worker.registry import BUILTIN_POLICIES\n"
        "table = env_table()\n"
        "assert any(r.adapter.prefix == 'pusht/' for r in table.adapters)\n"
        "loaded = [m for m in ('gym_pusht', 'pygame', 'pymunk', 'cv2') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "sys.modules['gym_pusht'] = None  # as on a node without the [pusht] extra\n"
        "from arena_eval.sim_worker.envs.factory import make_env\n"
        "try:\n"
        "    make_env('pusht/pixels', 1)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MissingSimDependency"), out.stdout
    assert "pip install 'arena-eval[pusht]'" in out.stdout


def _last_id(r: redis.Redis, stream: str) -> str:
    info = r.xinfo_stream(stream)
    value = info["last-generated-id"]
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(not shm_trust.available(), reason="no usable shm directory on this host")
def test_pusht_image_job_runs_through_a_pool_over_shared_memory(
    settings: RedisSettings, r: redis.Redis, tmp_path: Path
) -> None:
    skip_without_pusht()
    keys = Keys(settings.prefix)
    with procs(settings, tmp_path) as p:
        policy = p.cli(
            "policy", "serve", "--pool", POOL, "--policy", "pusht-heuristic", name="policy"
        )
        sim = p.cli("sim", "serve", "--num-envs", "4", name="sim")
        wait_until(lambda: pool.live_workers(r, keys, POOL), 90, "the policy worker", [policy])
        env = {"ARENA_REDIS_URL": settings.url or "", "ARENA_PREFIX": settings.prefix}
        # 4 slots in lockstep (16 steps = 2 chunks of 8, truncated together): every request
        # carries 4 frames of 96x96x3 = 110 KB, over the 64 KiB the inline path takes
        out = CliRunner().invoke(
            app,
            ["submit", "--task", "pusht/pixels", "--pool", POOL, "--episodes", "4",
             "--max-steps", "16", "--num-envs", "4", "--wait", "--json"],
            env=env,
        )  # fmt: skip
        assert out.exit_code == 0, out.output + p.log_of(sim) + p.log_of(policy)
        final = json.loads(out.stdout)
        job = jobs.get_job(r, keys, final["job_id"])
        assert job.state is JobState.COMPLETED
        assert final["episodes_done"] == 4 and final["requests"] == 2
        host_stream = keys.pool_host_requests(POOL, shm_trust.host_id())
        assert _last_id(r, host_stream) != "0-0"  # tickets went through the host stream
        assert _last_id(r, keys.pool_requests(POOL)) == "0-0"  # no frame went inline
        assert policy.poll() is None and sim.poll() is None


def _hidden_run(pattern: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` where every linker-path library matching ``pattern`` is bind-mounted over
    with /dev/null (``unshare -m``, as ``test_no_gl.py`` hides GL), ``MUJOCO_GL`` unset."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding libraries needs root and unshare(1); CI runs as root")
    listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True)
    dirs = {os.path.dirname(line.split("=>")[-1].strip()) for line in listing.stdout.splitlines()}
    files = sorted(
        {
            os.path.realpath(os.path.join(d, name))
            for d in dirs
            if os.path.isdir(d)
            for name in os.listdir(d)
            if re.match(pattern, name)
        }
    )
    if not files:
        pytest.skip(f"no library matching {pattern} installed: nothing to hide")
    mounts = "".join(f"mount --bind /dev/null {shlex.quote(f)} && " for f in files)
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    env["PYTHONPATH"] = str(REPO)
    argv = shlex.join([sys.executable, "-c", code])
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{mounts}exec {argv}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


_RENDER = (
    "import numpy as np\n"
    "from arena_eval.sim_worker.envs.factory import make_env\n"
    "try:\n"
    "    env = make_env('pusht/pixels', 2)\n"
    "except Exception as exc:\n"
    "    print(type(exc).__name__, exc); raise SystemExit(3)\n"
    "obs = env.step(np.full((2, 2), 256.0)).obs\n"
    "assert obs['pixels'].shape == (2, 96, 96, 3) and obs['pixels'].std() > 0\n"
    "print('rendered')\n"
)


@pytest.mark.slow
def test_pusht_frames_need_no_gl_backend() -> None:
    """No OSMesa, no EGL, MUJOCO_GL unset: PushT still draws its frames (pygame, in memory)."""
    skip_without_pusht()
    out = _hidden_run(r"^lib(OSMesa|EGL)", _RENDER)
    assert out.returncode == 0 and "rendered" in out.stdout, out.stdout + out.stderr[-2000:]


@pytest.mark.slow
def test_pusht_without_libgl_says_what_to_install() -> None:
    """gym-pusht's opencv-python links libGL.so.1: where it is missing, the error names the
    two fixes instead of a bare ImportError from inside cv2."""
    out = _hidden_run(r"^libGL\.so", _RENDER)
    assert out.returncode == 3, out.stdout + out.stderr[-2000:]
    assert out.stdout.startswith("MissingSimDependency"), out.stdout
    assert "apt-get install libgl1" in out.stdout and "opencv-python-headless" in out.stdout


_AFTER_A_FAILED_IMPORT = (
    "import sys\n"
    "before = list(sys.path)\n"
    "from arena_eval.sim_worker.envs.errors import MissingSimDependency\n"
    "from arena_eval.sim_worker.envs.pusht_env import _import_pusht\n"
    "try:\n"
    "    _import_pusht()\n"
    "except MissingSimDependency:\n"
    "    pass\n"
    "else:\n"
    "    raise SystemExit('OpenCV imported although libGL is hidden')\n"
    "assert sys.path == before, [p for p in sys.path if p not in before]\n"
    "assert not [m for m in sys.modules if m == 'cv2' or m.startswith('cv2.')]\n"
    "sys.modules.pop('typing')\n"
    "import typing\n"
    "assert typing.__file__.endswith('/typing.py') and 'cv2' not in typing.__file__\n"
    "print('clean')\n"
)


@pytest.mark.slow
def test_a_failed_opencv_import_leaves_the_process_as_it_was() -> None:
    """OpenCV's loader puts its folder on sys.path before loading its native module; when that
    fails, a sim worker that goes on serving other jobs must not find ``cv2/typing`` for
    ``import typing``."""
    out = _hidden_run(r"^libGL\.so", _AFTER_A_FAILED_IMPORT)
    assert out.returncode == 0 and "clean" in out.stdout, out.stdout + out.stderr[-2000:]
