"""``arena-eval report JOB [JOB...] -o report.html``: one self-contained HTML report.

The command only parses and hands off: ``broker.report_data`` reads the jobs (the same
figures ``status``, ``results`` and ``compare`` print), ``cli.report_html`` draws them with
plotly (the ``[report]`` extra), and the file is written atomically (a temporary file renamed
into place), so a report that failed half way never replaces a good one. ``--json`` prints
``{"output": path, "bytes": n, "jobs": [ids]}`` instead of the human line.

``docs/report.png`` is a screenshot of one (headless Chromium, ``--screenshot``): the
Meta-World expert with chunk 1 against chunk 24 on six tasks, 8 paired episodes each.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer

from arena_eval.broker.report_data import report_data
from arena_eval.cli.common import JSON_OPTION, REDIS_URL_OPTION, console, esc, print_json
from arena_eval.cli.job_shared import Warnings, open_redis


def report_cmd(
    job_ids: list[str] = typer.Argument(
        ..., help="Job ids; with two, the report adds their paired comparison (A then B)."
    ),
    output: Path = typer.Option(
        Path("report.html"), "--output", "-o", help="HTML file to write (replaced if present)."
    ),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Write an HTML report of jobs: per-task success, lengths, latency, throughput, specs."""
    from arena_eval.cli.report_html import render_report  # plotly: only for this command

    r, keys = open_redis(redis_url)
    warnings = Warnings()
    data = report_data(r, keys, job_ids, warnings.pending)
    warnings.flush()
    page = render_report(data).encode()
    write_atomically(output, page)
    if json_out:
        print_json({"output": str(output), "bytes": len(page), "jobs": job_ids})
    else:
        console.print(f"wrote {esc(str(output))} ({len(page) / 1e6:.1f} MB, {len(job_ids)} jobs)")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``."""
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
