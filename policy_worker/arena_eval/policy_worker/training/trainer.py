"""The behaviour-cloning loop: chunked targets, standardised MSE, AdamW, cosine decay.

Why so plain: the point is a *learned* policy that really runs through the
fabric, trained in seconds on a CPU in CI, not a new method. Chunked BC with an
MLP is what the issue asks for and what succeeds on Meta-World's reach/door
tasks from ~50 scripted demonstrations. Images get a small random shift
(pad-and-crop, as DrQ and diffusion_policy do) because a CNN trained on a
few thousand frames otherwise memorises pixels.

Determinism: ``seed`` seeds the sampler and the initial weights; the run is
repeatable on one machine (not bit-identical across devices or BLAS builds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.spec import FieldSpec, PolicySpec
from arena_eval.policy_worker.training.data import Episode, chunk_targets
from arena_eval.policy_worker.training.models import BCPolicyNet

__all__ = ["BCConfig", "EpochStats", "TrainResult", "split_keys", "train_bc"]

#: ``progress(epoch, epochs, mean_loss)`` after each epoch.
ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class BCConfig:
    """Knobs of ``train_bc`` (one default each)."""

    chunk: int = 1
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 256
    layers: int = 3
    channels: int = 32
    image_key: str | None = None
    state_keys: tuple[str, ...] | None = None  # None: every non-image key
    image_shift: int = 4  # random shift in pixels (images only; 0: off)
    device: str = "cpu"
    seed: int = 0
    name: str = "bc"


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    seconds: float


@dataclass
class TrainResult:
    """The trained model (on cpu, eval mode), its spec and the loss curve."""

    model: BCPolicyNet
    spec: PolicySpec
    curve: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0
    episodes: int = 0
    model_kwargs: dict[str, object] = field(default_factory=dict)


def split_keys(
    episodes: Sequence[Episode], image_key: str | None, state_keys: Sequence[str] | None
) -> tuple[tuple[str, ...], str | None]:
    """Which keys feed the MLP and which (if any) the CNN."""
    available = sorted(episodes[0].obs) if episodes else []
    if image_key is not None and image_key not in available:
        raise ConfigError(
            f"--image {image_key!r}: the episodes have no such observation (they have "
            f"{', '.join(available) or 'none'})"
        )
    if state_keys is None:
        state_keys = [k for k in available if k != image_key and episodes[0].obs[k].ndim in (1, 2)]
    missing = [k for k in state_keys if k not in available]
    if missing:
        raise ConfigError(f"state keys {missing} are not in the episodes ({available})")
    if not state_keys:
        raise ConfigError(
            f"no state observation to train on (keys: {available}); BC needs a state vector"
        )
    return tuple(state_keys), image_key


def _device(name: str) -> torch.device:
    text = name.strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name}: CUDA is not available (torch {torch.__version__}"
                f"{', CPU-only build' if not torch.version.cuda else ''}); use --device cpu"
            )
        return torch.device(text)
    raise ConfigError(f"--device: expected cpu or cuda[:N], got {name!r}")


def _shift(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (replicate-pad, then crop) per row."""
    b, h, w, _ = images.shape
    padded = torch.nn.functional.pad(
        images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate"
    )
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device="cpu").to(images.device)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device="cpu").to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None, :])[:, None, None, :]
    c = padded.shape[1]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, rows, cols].permute(0, 2, 3, 1)


def _spec(
    config: BCConfig,
    episodes: Sequence[Episode],
    keys: Sequence[str],
    obs_dtypes: Mapping[str, str] | None,
) -> PolicySpec:
    first = episodes[0]
    fields = {
        k: FieldSpec((obs_dtypes or {}).get(k, first.obs[k].dtype.name), first.obs[k].shape[1:])
        for k in keys
    }
    tasks = sorted({ep.task for ep in episodes if ep.task})
    return PolicySpec(
        name=config.name,
        action_shape=(config.chunk, int(first.actions.shape[1])),
        observations=fields,
        tasks=tuple(tasks) if tasks else None,
        extra={
            "trained_by": "arena-eval train bc",
            "episodes": len(episodes),
            "image_key": config.image_key,
        },
    )


def train_bc(
    episodes: Sequence[Episode],
    config: BCConfig,
    *,
    obs_dtypes: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train a chunked BC policy on ``episodes``; the result is on cpu, ready to export."""
    if config.epochs < 1 or config.batch_size < 1 or config.lr <= 0:
        raise ConfigError("epochs and batch size must be >= 1 and lr > 0")
    state_keys, image_key = split_keys(episodes, config.image_key, config.state_keys)
    keys = [*state_keys, *([image_key] if image_key else [])]
    samples = chunk_targets(episodes, keys, config.chunk)
    device = _device(config.device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)

    state = np.concatenate(
        [samples.obs[k].reshape(samples.rows, -1).astype(np.float32) for k in state_keys], axis=1
    )
    acts = samples.actions.reshape(-1, samples.actions.shape[-1])
    kwargs: dict[str, object] = {
        "state_keys": list(state_keys),
        "state_dim": int(state.shape[1]),
        "action_dim": int(samples.actions.shape[-1]),
        "chunk": config.chunk,
        "hidden": config.hidden,
        "layers": config.layers,
        "image_key": image_key,
        "image_shape": list(samples.obs[image_key].shape[1:]) if image_key else None,
        "channels": config.channels,
    }
    model = BCPolicyNet(**kwargs)  # type: ignore[arg-type]
    model.set_stats(
        torch.from_numpy(state.mean(0)),
        torch.from_numpy(state.std(0)),
        torch.from_numpy(acts.mean(0)),
        torch.from_numpy(acts.std(0)),
    )
    model.to(device).train()

    tensors = {k: torch.from_numpy(np.ascontiguousarray(samples.obs[k])) for k in keys}
    target = torch.from_numpy(samples.actions)
    if device.type == "cuda":
        tensors = {k: v.to(device) for k, v in tensors.items()}
        target = target.to(device)
    target_n = (target.to(device) - model.action_mean) / model.action_std
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(samples.rows / config.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs * steps_per_epoch)

    curve: list[EpochStats] = []
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(samples.rows, generator=gen)
        total, seen = 0.0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * config.batch_size : (i + 1) * config.batch_size].to(device)
            obs = {k: v[idx].to(device, non_blocking=True) for k, v in tensors.items()}
            if image_key is not None and config.image_shift > 0:
                obs[image_key] = _shift(obs[image_key], config.image_shift, gen)
            loss = torch.nn.functional.mse_loss(model.normalised(obs), target_n[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        curve.append(EpochStats(epoch, total / seen, time.perf_counter() - start))
        if progress is not None:
            progress(epoch, config.epochs, total / seen)
    model.to("cpu").eval()
    return TrainResult(
        model=model,
        spec=_spec(config, episodes, keys, obs_dtypes),
        curve=curve,
        seconds=time.perf_counter() - start,
        samples=samples.rows,
        episodes=len(episodes),
        model_kwargs=kwargs,
    )
