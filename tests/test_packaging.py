"""The built wheel: one top-level package, every source module in it, the entry points declared.

Each top-level folder (``broker/``, ``cli/``, ...) is a root of the ``arena_eval`` namespace
package, found by setuptools' ``packages.find``. A wheel that also installs a top-level
``broker`` or ``cli``, or one that silently drops a module, would still import from the
source tree: only building the wheel shows it. The build is offline (no build isolation: the
[dev] extra brings setuptools and wheel) and works on a copy of the tree, so it neither writes
``build/`` into the checkout nor picks up stale files from one there.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from arena_eval.policy_worker.registry import BUILTIN_POLICIES, ENTRY_POINT_GROUP

REPO = Path(__file__).resolve().parents[1]
#: The top-level folders, each the root of ``arena_eval.<folder>``.
NAMESPACE_ROOTS = ("broker", "sim_worker", "policy_worker", "cli", "benchmarks")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache", ".hypothesis", ".venv"
    )
    shutil.copytree(REPO, src, ignore=ignore)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (path,) = (tmp / "dist").glob("arena_eval-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def test_wheel_installs_only_the_arena_eval_package(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    top = {name.split("/")[0] for name in names}
    (dist_info,) = (t for t in top if t.endswith(".dist-info"))
    assert top == {"arena_eval", dist_info}, sorted(top)
    assert "arena_eval/__init__.py" not in names  # a namespace package (PEP 420)
    for root in NAMESPACE_ROOTS:
        assert f"arena_eval/{root}/py.typed" in names


def test_wheel_has_every_source_module(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for root in NAMESPACE_ROOTS:
        modules = sorted((REPO / root).rglob("*.py"))
        assert modules, f"no modules under {root}/"
        for module in modules:
            assert module.relative_to(REPO / root).as_posix() in names, module


def test_each_root_folder_holds_only_its_own_package() -> None:
    """Folder ``X/`` is ``arena_eval.X``: anything else in it would be installed elsewhere."""
    for root in NAMESPACE_ROOTS:
        parts = {p.relative_to(REPO / root).parts[:2] for p in (REPO / root).rglob("*.py")}
        assert parts == {("arena_eval", root)}, (root, sorted(parts))
        assert not (REPO / root / "arena_eval" / "__init__.py").exists()


def test_wheel_declares_entry_points(wheel: zipfile.ZipFile) -> None:
    (path,) = (n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    entry_points = configparser.ConfigParser(delimiters=("=",))
    entry_points.optionxform = str  # type: ignore[assignment,method-assign]
    entry_points.read_string(wheel.read(path).decode())
    assert entry_points["console_scripts"]["arena-eval"] == "arena_eval.cli.app:main"
    assert dict(entry_points[ENTRY_POINT_GROUP]) == dict(BUILTIN_POLICIES)


def test_console_script_reports_usage_errors_without_a_traceback() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "arena_eval.cli", "no-such-command"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "No such command" in out.stderr and "Traceback" not in out.stderr


def test_installed_wheel_runs_from_the_repo_root(wheel: zipfile.ZipFile, tmp_path: Path) -> None:
    # What a user does: `pip install .` then `arena-eval demo` in the checkout, whose
    # workers start as `python -m arena_eval.cli`. Python puts the cwd first on sys.path,
    # so nothing in the repo root may shadow the installed package. `-S` keeps the
    # editable install (a .pth finder) of this test environment out of the way.
    import site

    target = tmp_path / "installed"
    wheel.extractall(target)
    path = os.pathsep.join([str(target), *site.getsitepackages()])
    for args in (["--help"], ["policy", "serve", "--help"], ["demo", "--help"]):
        out = subprocess.run(
            [sys.executable, "-S", "-m", "arena_eval.cli", *args],
            cwd=REPO, env={**os.environ, "PYTHONPATH": path},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
