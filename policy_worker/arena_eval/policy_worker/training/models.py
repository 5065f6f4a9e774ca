"""The behaviour-cloning networks, with their normalisation inside the module.

Why normalisation lives in the model: the ``torch`` built-in serves a
checkpoint unchanged, and a checkpoint is a ``torch.export`` program -- so the
statistics must travel as buffers of the program itself. Observations are
standardised (mean/std over the training frames, with a floor on the std so a
constant dimension, such as Meta-World's zero padding, stays finite) and the
network predicts standardised actions, which ``forward`` maps back. Images
are uint8 ``(H, W, C)`` as the sims send them; scaling to [0, 1] and the
channel move happen here, as the checkpoint conventions ask.

Two shapes: ``BCPolicyNet`` with no image key is an MLP on the concatenated
state keys; with an image key a small CNN (three strided convolutions and a
spatial softmax, which keeps *where* things are -- what a pushing or reaching
policy needs) feeds the same MLP head together with the state. Every input is
cast to float32 inside, so the exported program accepts the dtypes of the
sim's observation spec (float64 Meta-World state, uint8 frames).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from arena_eval.broker.errors import ConfigError

__all__ = ["STD_FLOOR", "BCPolicyNet", "SpatialSoftmax"]

#: Smallest std a standardised dimension is divided by.
STD_FLOOR = 1e-2


class SpatialSoftmax(nn.Module):
    """Per channel, the softmax-weighted mean (x, y) position in [-1, 1]: 2C features."""

    pos: torch.Tensor

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        ys, xs = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij"
        )
        self.register_buffer("pos", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        b, c = feat.shape[0], feat.shape[1]
        weights = torch.softmax(feat.flatten(2), dim=-1)  # (B, C, HW)
        return torch.matmul(weights, self.pos).reshape(b, c * 2)


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class BCPolicyNet(nn.Module):
    """``forward(obs) -> (B, H, A)``: a chunk of actions from state (and an image)."""

    state_mean: torch.Tensor
    state_std: torch.Tensor
    action_mean: torch.Tensor
    action_std: torch.Tensor

    def __init__(
        self,
        state_keys: Sequence[str],
        state_dim: int,
        action_dim: int,
        chunk: int,
        *,
        hidden: int = 256,
        layers: int = 3,
        image_key: str | None = None,
        image_shape: Sequence[int] | None = None,
        channels: int = 32,
    ) -> None:
        super().__init__()
        self.state_keys = tuple(state_keys)
        self.image_key = image_key
        self.chunk = int(chunk)
        self.action_dim = int(action_dim)
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))
        features = state_dim
        self.encoder: nn.Module | None = None
        if image_key is not None:
            if image_shape is None or len(image_shape) != 3:
                raise ConfigError(f"image_shape must be (H, W, C), got {image_shape!r}")
            h, w, c = (int(s) for s in image_shape)
            for kernel, stride in ((5, 2), (3, 2), (3, 1)):
                h, w = _conv_out(h, kernel, stride), _conv_out(w, kernel, stride)
            if min(h, w) < 1:
                raise ConfigError(
                    f"image {list(image_shape)} is too small for the CNN (at least 19x19)"
                )
            self.encoder = nn.Sequential(
                nn.Conv2d(c, channels, 5, stride=2),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, stride=2),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, stride=1),
                SpatialSoftmax(h, w),
            )
            features += 2 * channels
        dims = [features] + [hidden] * layers
        body: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            body += [nn.Linear(a, b), nn.ReLU()]
        body.append(nn.Linear(dims[-1], chunk * action_dim))
        self.head = nn.Sequential(*body)

    def set_stats(
        self,
        state_mean: torch.Tensor,
        state_std: torch.Tensor,
        action_mean: torch.Tensor,
        action_std: torch.Tensor,
    ) -> None:
        """Store the training statistics (stds floored at ``STD_FLOOR``)."""
        for name, value in (
            ("state_mean", state_mean),
            ("state_std", state_std.clamp_min(STD_FLOOR)),
            ("action_mean", action_mean),
            ("action_std", action_std.clamp_min(STD_FLOOR)),
        ):
            buf: torch.Tensor = getattr(self, name)
            buf.copy_(value.to(buf))

    def state(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The standardised, concatenated state ``(B, D)``."""
        parts = [obs[k].to(torch.float32).flatten(1) for k in self.state_keys]
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return (x - self.state_mean) / self.state_std

    def normalised(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Standardised actions ``(B, H, A)``: what the loss compares."""
        x = self.state(obs)
        if self.encoder is not None and self.image_key is not None:
            img = obs[self.image_key].to(torch.float32).permute(0, 3, 1, 2) / 255.0
            x = torch.cat([x, self.encoder(img)], dim=1)
        out: torch.Tensor = self.head(x)
        return out.reshape(out.shape[0], self.chunk, self.action_dim)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.normalised(obs) * self.action_std + self.action_mean
