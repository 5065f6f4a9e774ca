"""The local stack's children never outlive it; a stopped demo cancels its own job.

Run as a user would: ``arena-eval up`` / ``demo`` in a subprocess, its worker
pids collected with psutil, then the supervisor killed with -9, hung up on
(terminal closed) or interrupted with Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from arena_eval.broker import jobs
from arena_eval.broker.connection import connect
from arena_eval.broker.embedded import EmbeddedRedis
from arena_eval.broker.fleet import live_sim_workers
from arena_eval.broker.jobs import JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from tests.worker_procs import REPO, child_env, wait_until

pytest.importorskip("gymnasium")


def _start_up(settings: RedisSettings, home: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "arena_eval.cli", "up", "--sim-workers", "2", "--num-envs", "1"],
        cwd=REPO, env=child_env(settings, ARENA_HOME=str(home)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _workers_of(
    up: subprocess.Popen[bytes], r: redis.Redis, keys: Keys, count: int
) -> list[psutil.Process]:
    wait_until(lambda: len(live_sim_workers(r, keys)) >= count, 90, "the sim workers", [up])
    children = psutil.Process(up.pid).children(recursive=True)
    assert len(children) >= count
    return children


def _none_alive(procs: list[psutil.Process]) -> bool:
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def _kill_leftovers(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


@pytest.mark.slow
def test_workers_die_with_a_supervisor_killed_with_9(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    up = _start_up(settings, tmp_path / "home")
    children: list[psutil.Process] = []
    try:
        children = _workers_of(up, r, keys, 2)
        up.kill()
        up.wait(30)
        wait_until(lambda: _none_alive(children), 60, f"the orphaned workers to exit: {children}")
    finally:
        up.kill()
        _kill_leftovers(children)


@pytest.mark.slow
def test_embedded_redis_stops_after_a_supervisor_killed_with_9(
    settings: RedisSettings, tmp_path: Path
) -> None:
    """The README path (no URL): the daemonized server the stack started goes too."""
    home = tmp_path / "home"
    env = child_env(settings, ARENA_HOME=str(home))
    env.pop("ARENA_REDIS_URL")
    up = subprocess.Popen(
        [sys.executable, "-m", "arena_eval.cli", "up", "--sim-workers", "1", "--num-envs", "1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = EmbeddedRedis(home)
    children: list[psutil.Process] = []
    redis_proc: list[psutil.Process] = []
    try:
        wait_until(lambda: server.status() is not None, 60, "the embedded Redis", [up])
        redis_proc.append(psutil.Process(int((home / "redis.pid").read_text())))
        r = connect(RedisSettings(url=server.url, prefix=settings.prefix))
        wait_until(lambda: live_sim_workers(r, keys_of(settings)), 90, "a sim worker", [up])
        r.close()
        children = psutil.Process(up.pid).children(recursive=True)
        up.kill()
        up.wait(30)
        with _logs_on_failure(home):
            wait_until(lambda: _none_alive(children), 60, f"the children to exit: {children}")
            wait_until(lambda: _none_alive(redis_proc), 60, "the embedded Redis to stop")
    finally:
        up.kill()
        _kill_leftovers(children)
        server.stop()


@contextlib.contextmanager
def _logs_on_failure(home: Path) -> Iterator[None]:
    """A timeout names what each stack child last wrote (its log under ``home/logs``)."""
    try:
        yield
    except AssertionError as exc:
        tails = [
            f"--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            for log in sorted((home / "logs").glob("*.log"))
        ]
        raise AssertionError("\n".join([str(exc), *tails])) from None


def keys_of(settings: RedisSettings) -> Keys:
    return Keys(settings.prefix)


@pytest.mark.slow
def test_hang_up_stops_the_stack_cleanly(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    up = _start_up(settings, tmp_path / "home")
    children: list[psutil.Process] = []
    try:
        children = _workers_of(up, r, keys, 2)
        up.send_signal(signal.SIGHUP)
        output = up.communicate(timeout=60)[0].decode(errors="replace")
        assert up.returncode == 0, output
        assert "stopping" in output
        assert _none_alive(children)
        assert live_sim_workers(r, keys) == []  # they stopped gracefully and deregistered
    finally:
        up.kill()
        _kill_leftovers(children)


@pytest.mark.slow
def test_ctrl_c_on_demo_cancels_its_job(
    settings: RedisSettings, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    pytest.importorskip("metaworld")
    demo = subprocess.Popen(
        [sys.executable, "-m", "arena_eval.cli", "demo", "--episodes", "500", "--sim-workers",
         "1", "--num-envs", "1"],
        cwd=REPO, env=child_env(settings, ARENA_HOME=str(tmp_path / "home")),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def running_job() -> str | None:
            if not r.zcard(keys.jobs()):
                return None
            job_id = jobs.latest_job_id(r, keys)
            return job_id if jobs.job_state(r, keys, job_id) is JobState.RUNNING else None

        job_id = wait_until(running_job, 120, "the demo's job to run", [demo])
        demo.send_signal(signal.SIGINT)
        output = demo.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        demo.kill()
    assert demo.returncode == 130, output
    assert f"cancelled job {job_id}" in output
    assert jobs.get_job(r, keys, job_id).state is JobState.CANCELLED
