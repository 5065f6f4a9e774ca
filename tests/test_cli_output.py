"""What the CLI prints around errors and help, run through the real entry point.

Error text carries user input and data from Redis, so it must never be read
as rich markup; help must not show a type for flags; a password typed on the
command line earns a warning, because every local user can read argv.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.worker_procs import REPO


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ARENA_")}
    base.update(PYTHONPATH=str(REPO), COLUMNS="120", **env)
    return subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", *args],
        cwd=REPO, env=base, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


@pytest.mark.parametrize("job_id", ["[/x]", "[bold]abc"])
def test_markup_in_a_job_id_is_printed_as_typed(redis_url: str, job_id: str) -> None:
    line = _one_error_line(_cli("cancel", job_id, ARENA_REDIS_URL=redis_url))
    assert f"'{job_id}'" in line


def test_brackets_in_an_error_message_survive(redis_url: str) -> None:
    """The torch hint names an extra in brackets: it must not be eaten as markup."""
    code = (
        "import sys; sys.modules['torch'] = None; "
        "sys.argv = ['arena-eval', 'policy', 'serve', '--pool', 'p', '--policy', 'torch']; "
        "from arena_eval.cli.app import main; main()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARENA_")}
    env.update(PYTHONPATH=str(REPO), COLUMNS="200", ARENA_REDIS_URL=redis_url)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert "pip install 'arena-eval[policy]'" in _one_error_line(out)


@pytest.mark.parametrize("command", [[], ["submit"], ["up"], ["redis", "url"]])
def test_help_shows_no_type_for_flags(command: list[str]) -> None:
    out = _cli(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert "--help" in out.stdout
    assert "<bool>" not in out.stdout


def test_password_on_the_command_line_is_warned_about_once() -> None:
    out = _cli("redis", "url", "--redis-url", "redis://:sekrit-pw@127.0.0.1:1/0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "redis://:****@127.0.0.1:1/0"
    assert out.stderr.count("warning: the password in --redis-url") == 1
    assert "ARENA_REDIS_URL" in out.stderr and "ARENA_REDIS_PASSWORD" in out.stderr
    assert "sekrit-pw" not in out.stdout + out.stderr


def test_password_from_the_environment_is_not_warned_about() -> None:
    out = _cli("redis", "url", ARENA_REDIS_URL="redis://:sekrit-pw@127.0.0.1:1/0")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    out = _cli("redis", "url", "--redis-url", "redis://127.0.0.1:1/0")
    assert out.stderr == ""
