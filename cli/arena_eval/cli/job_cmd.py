"""``arena-eval submit | status | results | jobs | cancel | workers``: evaluation jobs.

Each command parses its options, calls one function of ``arena_eval.broker``
(``jobs`` to change things, ``status`` to read them) and renders the result
with rich; ``--json`` prints the same dict the table is made from, so scripts
and humans see the same numbers. Every string that comes from the user or
from Redis (ids, task and pool names, reasons, cells) is escaped before rich
sees it, so ``[red]`` in a reason prints as ``[red]``. Fields someone wrote
by hand that do not parse are named in ``warning:`` lines on stderr; the
command carries on without them.

Stable output for scripts:

* ``submit`` prints only the job id on stdout (``--json``: ``{"job_id": ...}``);
  hints go to stderr. Ctrl-C on ``submit --wait`` asks (on a terminal) whether
  to cancel the job; without a terminal the job keeps running. Exit 130 either way.
* ``submit`` with several ``--pool``: one job per pool (same tasks and seeds), one
  id per line (``--json``: ``{"job_id": first, "job_ids": [...]}``); ``--wait`` waits
  for all (``--json``: the one status dict, or ``{"jobs": [...]}`` for several).
* ``results --format json``: ``{"job_id", "state", "reason", "spec", "metrics":
  {num_episodes, successes, success_rate, wilson_low, wilson_high, mean_length,
  mean_return, metric_means}, "tasks": [one row per task, columns
  ``broker.per_task.TASK_COLUMNS``], "suite": {score, low, high, tasks},
  "episodes": [one result dict per episode, by index]}`` (the result dict is
  documented in ``broker/episode.py``). ``status --json`` has ``tasks`` and ``suite`` too.
* ``results --format csv``: one row per episode, sorted by index; columns
  ``index,seed,success,return,length,wall_s,worker,finished_at,task,task_episode``
  in that order, then ``m.<metric>`` per task metric, sorted by name. ``finished_at`` is
  ISO 8601 in UTC, e.g. ``2026-12-01T10:17:01Z`` (the JSON keeps unix seconds).
  ``--tasks``: one row per task instead, columns ``TASK_COLUMNS``
  (``task,episodes,successes,success_rate,wilson_low,wilson_high,mean_length,
  mean_return,steps_per_s``).
* ``compare A B --json``: see ``cli/compare_cmd.py``.
* ``cancel`` exits 0 when it cancelled the job and also when the job had already
  ended (the message says in which state); 1 when there is no such job.
* ``jobs prune --json``: ``{"dry_run", "older_than_s", "pruned": [{"job_id",
  "state", "ended"}], "junk": [members of the jobs set older than the cutoff that
  are not job ids, removed unless --dry-run]}``.

The commands live in ``job_run_cmd`` (submit, status, results: one job) and
``job_admin_cmd`` (jobs, prune, cancel, workers); this module only collects
them for ``cli/app.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from arena_eval.cli.compare_cmd import compare_cmd
from arena_eval.cli.job_admin_cmd import cancel_cmd, jobs_app, workers_cmd
from arena_eval.cli.job_run_cmd import results_cmd, status_cmd, submit_cmd

#: Top-level commands this module adds to the root app (see ``cli/app.py``).
COMMANDS: dict[str, Callable[..., None]] = {
    "submit": submit_cmd,
    "status": status_cmd,
    "results": results_cmd,
    "cancel": cancel_cmd,
    "workers": workers_cmd,
    "compare": compare_cmd,
}
#: Command groups this module adds to the root app with ``add_typer``.
GROUPS: dict[str, typer.Typer] = {"jobs": jobs_app}
