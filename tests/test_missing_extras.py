"""Commands whose dependency lives in an extra say which extra to install, in one line.

Each runs the real CLI in a child process where the module is made unimportable
(``sys.modules[name] = None``, as on a machine without the extra).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.worker_procs import REPO

_RUN = (
    "import sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    sys.modules[name] = None\n"
    "sys.argv = ['arena-eval', *sys.argv[2:]]\n"
    "from arena_eval.cli.app import main\n"
    "main()\n"
)


def _run(hidden: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _RUN, hidden, *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("hidden", "args", "extra"),
    [
        ("zmq", ["gateway", "zmq", "--pool", "p"], "arena-eval[gateway]"),
        ("websockets", ["gateway", "openpi", "--pool", "p"], "arena-eval[gateway]"),
        ("torch", ["train", "bc", "--data", "/nonexistent", "--out", "/tmp/x.pt2"],
         "arena-eval[policy]"),
    ],
)  # fmt: skip
def test_a_missing_extra_is_one_line_naming_it(hidden: str, args: list[str], extra: str) -> None:
    out = _run(hidden, *args)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert f"pip install '{extra}'" in errors[0]
    assert errors[0].count("pip install") == 1
