"""Recording in, checkpoint out: what ``arena-eval train bc`` runs after parsing.

Why a function and not CLI code: the CLI only parses and shows progress;
tests and notebooks call this with the same arguments and get the same
summary (the JSON ``--json`` prints).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from arena_eval.policy_worker.training.export import curve_paths, export_policy
from arena_eval.policy_worker.training.recorded import load_recorded
from arena_eval.policy_worker.training.trainer import BCConfig, ProgressFn, train_bc

__all__ = ["train_from_recording"]


def train_from_recording(
    data: str | Path,
    out: str | Path,
    config: BCConfig,
    *,
    obs_dtypes: Mapping[str, str] | None = None,
    task: str | None = None,
    success_only: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train on the recording at ``data``, write ``out`` and its loss curve; a summary dict."""
    images = [config.image_key] if config.image_key else []
    recorded = load_recorded(
        data, images=images, obs_dtypes=obs_dtypes, task=task, success_only=success_only
    )
    result = train_bc(recorded.episodes, config, obs_dtypes=recorded.dtypes, progress=progress)
    path = export_policy(out, result)
    csv_path, svg_path = curve_paths(path)
    return {
        "checkpoint": str(path),
        "checkpoint_bytes": os.path.getsize(path),
        "loss_csv": str(csv_path),
        "loss_svg": str(svg_path),
        "episodes": result.episodes,
        "samples": result.samples,
        "epochs": config.epochs,
        "final_loss": result.curve[-1].loss if result.curve else None,
        "train_seconds": round(result.seconds, 3),
        "device": config.device,
        "spec": result.spec.to_dict(),
    }
