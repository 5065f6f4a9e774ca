"""``arena-eval train bc``: train a policy from a recording (parse, hand off, show progress).

Why in the CLI at all: the loop the issue asks for -- record with ``submit
--record``, train, ``policy serve --policy torch`` -- should need no Python.
torch is imported only when the command runs, so a sim-only install (no
``[policy]`` extra) still starts ``arena-eval`` and gets the install line here.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from arena_eval.broker.errors import ConfigError
from arena_eval.cli.common import JSON_OPTION, console, print_json

app = typer.Typer(help="Train policies from recorded episodes.", no_args_is_help=True)


def _dtypes(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, dtype = item.partition("=")
        if not sep or not key or not dtype:
            raise typer.BadParameter(f"expected KEY=DTYPE, got {item!r}", param_hint="--obs-dtype")
        out[key] = dtype
    return out


@app.command("bc")
def bc_cmd(
    data: str = typer.Option(..., "--data", help="Recording directory (submit --record-dir)."),
    out: str = typer.Option(
        ..., "--out", help="Checkpoint to write: .pt2 (torch.export), .pt (state dict) or .ts."
    ),
    chunk: int = typer.Option(4, "--chunk", help="Actions per predicted chunk (H)."),
    image: str | None = typer.Option(
        None, "--image", help="Image observation for the CNN (e.g. pixels); default: state only."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda[:N]."),
    epochs: int = typer.Option(100, "--epochs", help="Passes over the training frames."),
    batch_size: int = typer.Option(256, "--batch-size", help="Frames per gradient step."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (cosine decay to 0)."),
    hidden: int = typer.Option(256, "--hidden", help="Width of the MLP head."),
    task: str | None = typer.Option(None, "--task", help="Train only on this task's episodes."),
    success_only: bool = typer.Option(
        False, "--success-only", help="Train only on episodes that succeeded."
    ),
    obs_dtype: list[str] = typer.Option(
        [], "--obs-dtype", help="KEY=DTYPE the sim sends (default: the recording's, or float64)."
    ),
    name: str = typer.Option("bc", "--name", help="Policy name in the checkpoint's spec."),
    seed: int = typer.Option(0, "--seed", help="Seed of the weights and the sampler."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Chunked behaviour cloning (MLP on state, or CNN on --image plus state) to a checkpoint
    that `policy serve --policy torch --policy-arg path=OUT` serves."""
    try:
        from arena_eval.policy_worker.training.pipeline import train_from_recording
        from arena_eval.policy_worker.training.trainer import BCConfig
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "PyTorch"
        raise ConfigError(
            f"train bc needs PyTorch and pyarrow ({missing!r} is not installed): "
            "pip install 'arena-eval[policy]'"
        ) from None
    config = BCConfig(
        chunk=chunk,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        hidden=hidden,
        image_key=image,
        device=device,
        seed=seed,
        name=name,
    )
    progress = Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    bar = progress.add_task("epochs", total=epochs, loss="-")

    def on_epoch(epoch: int, total: int, loss: float) -> None:
        progress.update(bar, completed=epoch, loss=f"{loss:.4g}")

    with progress if not json_out else nullcontext():
        summary: dict[str, Any] = train_from_recording(
            data,
            out,
            config,
            obs_dtypes=_dtypes(obs_dtype),
            task=task,
            success_only=success_only,
            progress=None if json_out else on_epoch,
        )
    if json_out:
        print_json(summary)
        return
    console.print(
        f"{summary['checkpoint']}: {summary['checkpoint_bytes'] / 1024:.0f} KiB, "
        f"{summary['episodes']} episodes / {summary['samples']} frames, "
        f"{summary['epochs']} epochs in {summary['train_seconds']:.1f} s on {device}, "
        f"final loss {summary['final_loss']:.4g}",
        highlight=False,
        markup=False,
    )
    console.print(f"loss curve: {summary['loss_csv']}, {summary['loss_svg']}", markup=False)
    console.print(
        f"serve it: arena-eval policy serve --pool POOL --policy torch "
        f"--policy-arg path={summary['checkpoint']}",
        markup=False,
        style="dim",
    )
