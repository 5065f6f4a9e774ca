"""``arena-eval up`` and ``arena-eval demo``: a whole fabric on one machine.

Both hand off to ``arena_eval.cli.stack.LocalStack``; ``demo`` then submits the
README's job (a small suite: three Meta-World tasks, one job, the multi-task scripted
expert; state observations only, so it needs no OpenGL), shows its progress and prints
the per-task table with the suite score. SIGTERM and
SIGHUP (the terminal closed) stop the stack like Ctrl-C; a demo stopped early
cancels its own job, so no worker keeps running it. Option defaults are the
stack's (``LocalStack``) and the workers' (``SimWorkerConfig``): none is written
here a second time, and a worker option the user did not set is not passed on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis
import typer

from arena_eval.broker import jobs
from arena_eval.broker.connection import connect
from arena_eval.broker.errors import ArenaEvalError
from arena_eval.broker.jobs import JobSpec, JobState
from arena_eval.broker.keys import Keys
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.signals import interrupt_on_signals
from arena_eval.broker.status import results_report
from arena_eval.cli.common import (
    JSON_OPTION,
    REDIS_URL_OPTION,
    console,
    esc,
    print_json,
    settings_for,
)
from arena_eval.cli.job_run_cmd import print_results, wait_with_progress
from arena_eval.cli.stack import LocalStack, StackError, parse_gateway
from arena_eval.sim_worker.config import SimWorkerConfig

#: The demo's suite: three Meta-World tasks the scripted expert solves, about 80 steps each.
DEMO_TASKS = ("door-open-v3", "drawer-open-v3", "button-press-topdown-v3")
DEMO_POOL = "demo-expert"


def up_cmd(
    ctx: typer.Context,
    sim_workers: int = typer.Option(
        LocalStack.sim_workers, "--sim-workers", min=0, help="Sim worker processes."
    ),
    pool: str | None = typer.Option(
        None, "--pool", help="Also start policy workers serving this pool (needs --policy)."
    ),
    policy: str | None = typer.Option(
        None, "--policy", help="Policy for --pool (arguments: `arena-eval policy describe NAME`)."
    ),
    policy_arg: list[str] = typer.Option(
        [], "--policy-arg", help="Policy argument KEY=VALUE; repeat for more."
    ),
    policy_workers: int = typer.Option(
        LocalStack.policy_workers,
        "--policy-workers",
        min=1,
        help="Policy worker processes for --pool.",
    ),
    num_envs: int | None = typer.Option(
        None,
        "--num-envs",
        min=1,
        help="Env slots per sim.",
        show_default=f"the sim worker's, {SimWorkerConfig.num_envs}",
    ),
    overlap: bool | None = typer.Option(
        None,
        "--overlap/--no-overlap",
        help="Sim workers double-buffer their rollouts (`sim serve --overlap`).",
        show_default="the sim worker's",
    ),
    gateway: list[str] = typer.Option(
        [],
        "--gateway",
        help="Also serve --pool to peers' clients: zmq:PORT or openpi:PORT; repeat for more.",
    ),
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Start Redis (embedded unless --redis-url), workers; supervise until Ctrl-C."""
    if bool(pool) != bool(policy):
        raise typer.BadParameter("--pool and --policy go together")
    for item in gateway:
        try:
            parse_gateway(item)
        except StackError as exc:
            raise typer.BadParameter(str(exc), param_hint="--gateway") from None
    if gateway and not pool:
        raise typer.BadParameter(
            "needs --pool (and --policy): the pool it serves", param_hint="--gateway"
        )
    settings = settings_for(redis_url)
    stack = up_stack(settings, ctx.params)
    with interrupt_on_signals("stopping the stack in order"):
        try:
            with console.status("starting workers...", spinner="dots"):
                stack.start()
                stack.wait_ready()
            names = ", ".join(c.name for c in stack.children)
            console.print(
                f"up on {esc(settings.with_url(stack.url).masked_url())}: {esc(names)}. "
                "Submit jobs with `arena-eval submit`; Ctrl-C stops everything.",
                highlight=False,
            )
            while True:
                stack.supervise_once(lambda msg: console.print(msg, highlight=False, markup=False))
                time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping...")
        finally:
            stack.stop()


def up_stack(settings: RedisSettings, options: Mapping[str, Any]) -> LocalStack:
    """The stack ``up`` starts for its parsed options (``None``: the workers' own default)."""
    return LocalStack(
        settings, pool=options["pool"], policy=options["policy"],
        policy_args=options["policy_arg"], policy_workers=options["policy_workers"],
        sim_workers=options["sim_workers"], num_envs=options["num_envs"],
        overlap=options.get("overlap"), gateways=options.get("gateway") or (),
    )  # fmt: skip


def demo_stack(settings: RedisSettings, options: Mapping[str, Any]) -> LocalStack:
    """The stack ``demo`` starts for its parsed options: a pool serving the scripted expert."""
    return LocalStack(
        settings, pool=DEMO_POOL, policy="metaworld-expert",
        policy_args=[f"task={','.join(DEMO_TASKS)}"],
        sim_workers=options["sim_workers"], num_envs=options["num_envs"],
        overlap=options.get("overlap"),
    )  # fmt: skip


def _cancel_demo_job(r: redis.Redis, keys: Keys, job_id: str) -> None:
    """The demo's job belongs to the demo: stopping the demo cancels it, and says so."""
    try:
        outcome = jobs.request_cancel(r, keys, job_id)
    except (ArenaEvalError, redis.RedisError) as exc:
        console.print(f"could not cancel job {esc(job_id)}: {esc(exc)}", highlight=False)
        return
    if outcome.cancelled_now:
        console.print(f"cancelled job {esc(job_id)}", highlight=False)
    else:
        console.print(
            f"job {esc(job_id)} had already ended: {outcome.job.state.value}", highlight=False
        )


def demo_cmd(
    ctx: typer.Context,
    episodes: int = typer.Option(10, "--episodes", min=1, help="Episodes per task."),
    sim_workers: int = typer.Option(
        LocalStack.sim_workers, "--sim-workers", min=1, help="Sim worker processes."
    ),
    num_envs: int = typer.Option(
        SimWorkerConfig.num_envs, "--num-envs", min=1, help="Env slots per sim worker."
    ),
    overlap: bool | None = typer.Option(
        None,
        "--overlap/--no-overlap",
        help="Sim workers double-buffer their rollouts (`sim serve --overlap`).",
        show_default="the sim worker's",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Episode i is reset with seed SEED+i."),
    json_out: bool = JSON_OPTION,
    redis_url: str | None = REDIS_URL_OPTION,
) -> None:
    """Evaluate a small Meta-World suite with the scripted expert, end to end."""
    settings = settings_for(redis_url)
    stack = demo_stack(settings, ctx.params)
    r: redis.Redis | None = None
    job_id: str | None = None
    with interrupt_on_signals("stopping the stack in order"):
        try:
            with console.status(
                f"starting Redis, a policy pool and {sim_workers} sim workers...", spinner="dots"
            ):
                stack.start()
                stack.wait_ready()
            r = connect(settings.with_url(stack.url))
            keys = Keys(settings.prefix)
            tasks = tuple(f"metaworld/{t}" for t in DEMO_TASKS)
            spec = JobSpec(
                task=tasks[0], tasks=tasks, pool=DEMO_POOL, episodes=episodes,
                num_envs=num_envs, seed=seed,
            )  # fmt: skip
            job_id = jobs.submit(r, keys, spec)
            if not json_out:
                console.print(
                    f"job [bold]{esc(job_id)}[/]: {episodes} episodes of each of "
                    f"{esc(', '.join(tasks))} over {sim_workers} sim workers, "
                    f"policy pool '{DEMO_POOL}' (scripted expert)",
                    highlight=False,
                )
            (final,) = wait_with_progress(r, keys, job_id, quiet=json_out)
            report = results_report(r, keys, job_id)
            if json_out:
                print_json(report)
            else:
                print_results(report, episodes=False)
                console.print(f"every episode: `arena-eval results {esc(job_id)}`", highlight=False)
            r.close()
        except KeyboardInterrupt:
            console.print("interrupted: stopping the demo", highlight=False)
            if r is not None and job_id is not None:
                _cancel_demo_job(r, Keys(settings.prefix), job_id)
            raise typer.Exit(130) from None
        finally:
            stack.stop()
    if final["state"] != JobState.COMPLETED.value:
        raise typer.Exit(1)
