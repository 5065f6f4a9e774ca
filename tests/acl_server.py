"""A redis-server started with ``--aclfile``: the ACL files are tested exactly as deployed.

Loading the file through the server (not line by line with ACL SETUSER) is
what catches a line Redis refuses, such as a comment: a Redis ACL file holds
only ``user`` lines. The default user is off in both files, so the tests log
in as the file's ``admin`` with the file's own (placeholder) password.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from subprocess import CompletedProcess

import redis

from tests.redis_servers import free_port, stop_server
from tests.worker_procs import REPO

ACL_FILE = REPO / "docker" / "users.acl"
ACL_FILE_REDIS7 = REPO / "docker" / "users-redis7.acl"


def acl_passwords(acl_file: Path) -> dict[str, str]:
    """User name -> the password (``>...``) the file gives it."""
    out = {}
    for line in acl_file.read_text().splitlines():
        words = line.split()
        secret = [w[1:] for w in words if w.startswith(">")]
        if len(words) > 1 and words[0] == "user" and secret:
            out[words[1]] = secret[0]
    return out


def server_major(binary: str) -> int:
    """The major version a redis-server binary reports, 0 if it cannot tell."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    found = re.search(r"v=(\d+)\.", out.stdout)
    return int(found.group(1)) if found else 0


def redis7_binary() -> str | None:
    """A redis-server of version 7 or later on this machine (the system one in CI), or None."""
    candidates = [
        shutil.which("redis-server"),
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
    ]
    for path in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        if server_major(path) >= 7:
            return path
    return None


class AclServer:
    """A throwaway redis-server on a free loopback port whose users come from ``acl_file``."""

    def __init__(self, binary: str, acl_file: Path, workdir: Path) -> None:
        self.binary = binary
        self.acl_file = acl_file
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.passwords = acl_passwords(acl_file)
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, user: str) -> str:
        return f"redis://{user}:{self.passwords[user]}@127.0.0.1:{self.port}/0"

    def client(self, user: str) -> redis.Redis:
        return redis.Redis.from_url(self.url(user), socket_timeout=10)

    def start(self, timeout_s: float = 10.0) -> AclServer:
        log = self.workdir / "redis.log"
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--aclfile", str(self.acl_file), "--dir", str(self.workdir),
            "--save", "", "--appendonly", "no", "--logfile", str(log),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        admin = self.client("admin")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    raise RuntimeError(f"redis-server refused {self.acl_file}:\n{tail}") from None
                time.sleep(0.02)
        admin.close()
        return self

    def stop(self) -> None:
        stop_server(self.proc)
        self.proc = None


def cli_as(url: str, *args: str) -> CompletedProcess[str]:
    """Run ``arena-eval ARGS`` connected through ``url``, with no other ARENA_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARENA_")}
    env["ARENA_REDIS_URL"] = url
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def run_job_as_roles(server: AclServer) -> str:
    """A policy worker as ``policy``, a sim worker as ``sim``, a job submitted as ``admin``:
    the job must complete. Returns its id."""
    import threading

    from arena_eval.broker import jobs
    from arena_eval.broker.connection import connect
    from arena_eval.broker.jobs import JobSpec, JobState
    from arena_eval.broker.keys import Keys
    from arena_eval.broker.settings import RedisSettings
    from arena_eval.policy_worker.builtins.simple import ZeroPolicy
    from arena_eval.policy_worker.server import PolicyWorker
    from arena_eval.sim_worker.service import SimWorker
    from tests.worker_procs import wait_until

    def as_user(user: str) -> RedisSettings:
        return RedisSettings(url=server.url(user), retry_budget_s=2.0)

    policy = PolicyWorker("acl-pool", ZeroPolicy(action_shape="1x1"), as_user("policy"))
    sim = SimWorker(as_user("sim"), num_envs=2, block_ms=200)
    threads = [threading.Thread(target=w.run, daemon=True) for w in (policy, sim)]
    for t in threads:
        t.start()
    admin_r = connect(as_user("admin"))
    keys = Keys()
    try:
        job_id = jobs.submit(
            admin_r, keys, JobSpec(task="CartPole-v1", pool="acl-pool", episodes=3)
        )
        wait_until(lambda: jobs.get_job(admin_r, keys, job_id).state.terminal, 60, "the job")
        job = jobs.get_job(admin_r, keys, job_id)
        assert job.state is JobState.COMPLETED, job.reason
    finally:
        sim.stop()
        policy.stop()
        for t in threads:
            t.join(10)
    return job_id
