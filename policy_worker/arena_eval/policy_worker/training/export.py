"""Write a trained BC policy as a checkpoint the ``torch`` built-in serves unchanged.

Why ``torch.export`` (``.pt2``) by default: the program carries the network,
its normalisation buffers and (as ``arena_spec.json``) its ``PolicySpec`` in
one file, with a dynamic batch dimension; a worker needs neither this package
nor the class to run it. A ``.pt`` path writes the arena-eval state dict
instead (it names ``BCPolicyNet`` and its plain-data arguments, loaded with
``weights_only=True``); ``.ts`` writes TorchScript. See ``torch_checkpoint``.

The loss curve goes next to the checkpoint as ``<out>.loss.csv`` (epoch, loss,
seconds) and ``<out>.loss.svg`` (a plain line chart any browser opens: no
plotting library is needed for one polyline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from arena_eval.policy_worker.builtins.torch_checkpoint import save_checkpoint
from arena_eval.policy_worker.training.trainer import EpochStats, TrainResult

__all__ = ["curve_paths", "export_policy", "write_loss_csv", "write_loss_svg"]

_TARGET = "arena_eval.policy_worker.training.models:BCPolicyNet"


def curve_paths(out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    return out.with_name(out.name + ".loss.csv"), out.with_name(out.name + ".loss.svg")


def export_policy(out: str | Path, result: TrainResult) -> Path:
    """Save the checkpoint (format by extension, ``.pt2`` = torch.export) and the loss curve."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix in (".pt2", ".ts", ".jit", ".torchscript"):
        save_checkpoint(out, result.model, result.spec)
    else:
        save_checkpoint(
            out, result.model, result.spec, model_target=_TARGET, model_kwargs=result.model_kwargs
        )
    csv_path, svg_path = curve_paths(out)
    write_loss_csv(csv_path, result.curve)
    write_loss_svg(svg_path, result.curve)
    return out


def write_loss_csv(path: Path, curve: Sequence[EpochStats]) -> None:
    lines = ["epoch,loss,seconds"]
    lines += [f"{e.epoch},{e.loss:.6g},{e.seconds:.3f}" for e in curve]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_loss_svg(path: Path, curve: Sequence[EpochStats], width: int = 480) -> None:
    """Training loss (log scale) per epoch as one SVG polyline with its range labelled."""
    height, pad = width * 5 // 8, 40
    losses = np.log10(np.maximum([e.loss for e in curve] or [1.0], 1e-12))
    lo, hi = float(losses.min()), float(losses.max())
    span = hi - lo or 1.0
    n = max(len(losses) - 1, 1)
    points = " ".join(
        f"{pad + (width - 2 * pad) * i / n:.1f},{pad + (height - 2 * pad) * (hi - v) / span:.1f}"
        for i, v in enumerate(losses)
    )
    text = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n'
        f'<text x="{pad}" y="20">BC training loss (log10), {len(curve)} epochs</text>\n'
        f'<text x="4" y="{pad + 4}">{10**hi:.3g}</text>\n'
        f'<text x="4" y="{height - pad + 4}">{10**lo:.3g}</text>\n'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{points}"/>\n'
        f'<text x="{width - pad - 40}" y="{height - 12}">epoch {len(curve)}</text>\n'
        "</svg>\n"
    )
    path.write_text(text, encoding="utf-8")
