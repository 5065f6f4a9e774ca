"""A whole fabric on one machine: Redis, policy workers and sim workers as child processes.

``arena-eval up`` and ``arena-eval demo`` use this. Workers run as separate
processes, exactly as they would on separate machines, talking only through
Redis; the stack just starts them, restarts any that crash, and stops them
all (and the embedded Redis, if it started it) on exit.

Children must not outlive their supervisor, even one killed with -9 (which
runs no cleanup): each child, told the supervisor's pid in its environment,
asks the kernel at start-up for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG`` on Linux, see ``parent_death.py``), and SIGTERM is a
worker's graceful stop. Children are started from the main thread, the one
whose exit the kernel watches.
They run in their own session so that a terminal's Ctrl-C or hang-up reaches
only the supervisor, which then stops them in order. The embedded Redis
daemonizes, so a small guard child (``redis_guard.py``) stops it in that case.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from arena_eval.broker.connection import connect
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.keys import Keys
from arena_eval.broker.pool import live_workers
from arena_eval.broker.settings import RedisSettings
from arena_eval.cli.parent_death import env_for_child

_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)


class StackError(ArenaEvalError):
    """A process of the local stack failed to start."""


@dataclass
class Child:
    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_restart: float = 0.0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


GATEWAY_PROTOCOLS = ("zmq", "openpi")


def parse_gateway(value: str) -> tuple[str, int]:
    """``zmq:5555`` -> ``("zmq", 5555)``; StackError naming the accepted form otherwise."""
    protocol, _, port = value.partition(":")
    if protocol not in GATEWAY_PROTOCOLS or not port.isdigit() or not 0 < int(port) < 65536:
        raise StackError(
            f"--gateway {value!r}: expected PROTOCOL:PORT with PROTOCOL one of "
            f"{', '.join(GATEWAY_PROTOCOLS)}, e.g. zmq:5555 or openpi:8000"
        )
    return protocol, int(port)


@dataclass
class LocalStack:
    """Start, supervise and stop a local fabric.

    The fields below are the stack's own knobs, with their one default (``up`` and
    ``demo`` show and use them). Worker knobs are ``None`` unless the user set
    them: a child is then started without the option, and runs with its config's
    default (``SimWorkerConfig``, ``PolicyWorkerConfig``) -- a stack never writes
    a worker default a second time.
    """

    settings: RedisSettings
    #: Pool the policy workers serve; no policy workers without it (and ``policy``).
    pool: str | None = None
    #: Policy for ``pool``: a built-in name or ``module:Class``.
    policy: str | None = None
    #: Policy arguments as ``KEY=VALUE`` strings.
    policy_args: Sequence[str] = ()
    #: Policy worker processes for ``pool``.
    policy_workers: int = 1
    #: Sim worker processes.
    sim_workers: int = 2
    #: Env slots per sim worker (``sim serve --num-envs``); None: the worker's default.
    num_envs: int | None = None
    #: Double-buffered rollout (``sim serve --overlap/--no-overlap``); None: the worker's default.
    overlap: bool | None = None
    #: Batch window of the policy workers (``policy serve --max-wait-ms``); None: theirs.
    max_wait_ms: float | None = None
    #: Gateways in front of ``pool``, as ``PROTOCOL:PORT`` (``zmq:5555``, ``openpi:8000``).
    gateways: Sequence[str] = ()
    log_dir: Path | None = None
    children: list[Child] = field(default_factory=list)
    started_redis: bool = False
    url: str = ""
    guard: subprocess.Popen[bytes] | None = None

    # -- start -------------------------------------------------------------------
    def start(self) -> None:
        self.url = self._start_redis()
        from arena_eval.broker.embedded import resolve_home

        logs = self.log_dir or resolve_home(self.settings.home) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if self.started_redis:
            self._start_guard(resolve_home(self.settings.home), logs / f"{stamp}-redis-guard.log")
        for name, args in self.planned():
            self._spawn(name, args, logs / f"{stamp}-{name}.log")

    def planned(self) -> list[tuple[str, list[str]]]:
        """Each child's name and ``arena-eval`` arguments: the policy workers, then the sims.
        Only the worker options the user set are passed; the rest are the workers' defaults."""
        children = []
        if self.pool and self.policy:
            args = ["policy", "serve", "--pool", self.pool, "--policy", self.policy]
            if self.max_wait_ms is not None:
                args += ["--max-wait-ms", str(self.max_wait_ms)]
            for item in self.policy_args:
                args += ["--policy-arg", item]
            children += [(f"policy-{i}", list(args)) for i in range(self.policy_workers)]
        args = ["sim", "serve"]
        if self.num_envs is not None:
            args += ["--num-envs", str(self.num_envs)]
        if self.overlap is not None:
            args += ["--overlap" if self.overlap else "--no-overlap"]
        children += [(f"sim-{i}", list(args)) for i in range(self.sim_workers)]
        for item in self.gateways:
            protocol, port = parse_gateway(item)
            if not self.pool:
                raise StackError(f"--gateway {item} needs --pool: the pool the gateway serves")
            args = ["gateway", protocol, "--pool", self.pool]
            args += (
                ["--bind", f"tcp://0.0.0.0:{port}"] if protocol == "zmq" else ["--port", str(port)]
            )
            children.append((f"gateway-{protocol}-{port}", args))
        return children

    def _start_redis(self) -> str:
        if self.settings.url is not None:
            return self.settings.url
        from arena_eval.broker.embedded import EmbeddedRedis

        server = EmbeddedRedis(self.settings.home)
        if server.status() is None:
            server.start()
            self.started_redis = True
        return server.url

    def _spawn(self, name: str, args: list[str], log: Path) -> None:
        child = Child(name, args, log)
        self.children.append(child)
        self._launch(child)

    def _launch(self, child: Child) -> None:
        env = env_for_child(os.environ)
        env["ARENA_REDIS_URL"] = self.url
        env["ARENA_PREFIX"] = self.settings.prefix
        env["PYTHONUNBUFFERED"] = "1"
        with open(child.log, "ab") as out:
            child.proc = subprocess.Popen(
                [sys.executable, "-m", "arena_eval.cli", *child.args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to us; we stop children in order
            )

    def _start_guard(self, home: Path, log: Path) -> None:
        """A child that stops the Redis we started if we die without cleanup (kill -9)."""
        args = [
            "-m",
            "arena_eval.cli.redis_guard",
            str(home),
            self.settings.prefix,
            self.pool or "",
        ]
        with open(log, "ab") as out:
            self.guard = subprocess.Popen(
                [sys.executable, *args],
                env=env_for_child(os.environ),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the pool's workers and the sim workers have registered."""
        from arena_eval.broker.fleet import live_gateways, live_sim_workers

        r = connect(self.settings.with_url(self.url))
        keys = Keys(self.settings.prefix)
        deadline = time.monotonic() + timeout_s
        mine = {c.proc.pid for c in self.children if c.proc is not None}
        while True:
            for child in self.children:
                if not child.alive():
                    raise StackError(
                        f"{child.name} exited with {child.proc.returncode if child.proc else '?'} "
                        f"while starting; its log ({child.log}):\n{child.tail()}"
                    )
            policy_ok = (
                not (self.pool and self.policy)
                or sum(1 for w in live_workers(r, keys, self.pool) if w.data.get("pid") in mine)
                >= self.policy_workers
            )
            sims = sum(1 for w in live_sim_workers(r, keys) if w.data.get("pid") in mine)
            gateways = sum(1 for g in live_gateways(r, keys) if g.data.get("pid") in mine)
            if policy_ok and sims >= self.sim_workers and gateways >= len(self.gateways):
                r.close()
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"workers did not register within {timeout_s:.0f} s; logs in {self.log_dir}"
                )
            time.sleep(0.2)

    # -- supervise -----------------------------------------------------------------
    def supervise_once(self, on_event: Callable[[str], None] = lambda _m: None) -> None:
        """Restart children that died, with backoff."""
        now = time.monotonic()
        for child in self.children:
            if child.alive():
                continue
            if child.next_restart == 0.0:
                delay = _RESTART_BACKOFF_S[min(child.restarts, len(_RESTART_BACKOFF_S) - 1)]
                child.next_restart = now + delay
                code = child.proc.returncode if child.proc else "?"
                on_event(f"{child.name} exited ({code}); restarting in {delay:.0f} s")
            elif now >= child.next_restart:
                child.restarts += 1
                child.next_restart = 0.0
                self._launch(child)
                on_event(f"{child.name} restarted")

    # -- stop ----------------------------------------------------------------------
    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every child (sims first, so they stop asking), wait, then kill."""
        if self.guard is not None:  # we stop Redis ourselves, after the workers
            with contextlib.suppress(ProcessLookupError):
                self.guard.kill()
            self.guard.wait(5)
            self.guard = None
        order = [c for c in self.children if c.name.startswith("sim")] + [
            c for c in self.children if not c.name.startswith("sim")
        ]
        for group in (order[: self.sim_workers], order[self.sim_workers :]):
            for child in group:
                if child.alive() and child.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for child in group:
                if child.proc is None:
                    continue
                try:
                    child.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait(5)
        if self.started_redis:
            from arena_eval.broker.embedded import EmbeddedRedis

            EmbeddedRedis(self.settings.home).stop()
            self.started_redis = False

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
