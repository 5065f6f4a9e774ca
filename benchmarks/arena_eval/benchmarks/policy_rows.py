"""Rows per second of a served torch policy at several batch sizes, on cpu (and cuda).

Why: a pool's value is batching -- one forward pass for the rows of many sims
-- so the figure that matters is rows/s against batch size, for the model
alone and through the fabric (a ``policy serve --policy torch`` worker and a
client sending ``B`` rows per request), each device in the same run. A
per-stage profile of one request (codec encode/decode, host-to-device copy,
forward, device-to-host copy) shows where a small model's time goes.

The model is ``train bc``'s network with untrained weights (speed does not
depend on them): ``mlp`` = Meta-World state (39) -> chunk 4 x 4; ``cnn`` =
PushT pixels (96x96x3) + agent_pos -> chunk 8 x 2. ``--checkpoint`` measures
your own ``.pt2`` instead (its spec gives the observations).

``arena-eval bench policy --batch 1,8,64,256 [--model cnn] [--device cpu,cuda]``
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from arena_eval.benchmarks.latency import ROW_CONTEXT, _child
from arena_eval.broker import codec
from arena_eval.broker.connection import resolve_url
from arena_eval.broker.settings import RedisSettings
from arena_eval.broker.spec import FieldSpec, PolicySpec

__all__ = ["MODELS", "format_table", "make_checkpoint", "run_policy_rows"]

MODELS = ("mlp", "cnn")


def make_checkpoint(path: Path, model: str) -> Path:
    """An untrained ``train bc`` network of the ``model`` shape, exported as ``.pt2``."""
    from arena_eval.policy_worker.builtins.torch_checkpoint import save_exported
    from arena_eval.policy_worker.training.models import BCPolicyNet

    if model == "mlp":
        net = BCPolicyNet(["state"], 39, 4, 4)
        obs = {"state": FieldSpec("float64", (39,))}
        shape = (4, 4)
    elif model == "cnn":
        net = BCPolicyNet(["agent_pos"], 2, 2, 8, image_key="pixels", image_shape=(96, 96, 3))
        obs = {"pixels": FieldSpec("uint8", (96, 96, 3)), "agent_pos": FieldSpec("float64", (2,))}
        shape = (8, 2)
    else:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    spec = PolicySpec(name=f"bench-bc-{model}", action_shape=shape, observations=obs)
    return save_exported(path, net.eval(), spec)


def _obs(spec: PolicySpec, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    assert spec.observations is not None
    out = {}
    for key, field in spec.observations.items():
        dtype = np.dtype(field.dtype)
        if dtype.kind == "u":
            out[key] = rng.integers(0, 256, (rows, *field.shape), dtype=dtype)
        else:
            out[key] = rng.random((rows, *field.shape)).astype(dtype)
    return out


def _rate(fn: Callable[[], object], rows: int, seconds: float) -> float:
    fn()  # warm-up (lazy kernels, staging buffers)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 3:
        fn()
        n += 1
    return rows * n / elapsed


def _median_ms(fn: Callable[[], object], repeats: int = 30) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(float(np.median(times)) * 1e3, 4)


def _profile(policy: Any, obs: dict[str, np.ndarray]) -> dict[str, float]:
    """Median ms of each stage of one request on the worker (codec through the copies back).

    Reaches into the torch policy's own input/output steps so each is timed alone.
    """
    import torch

    cuda = policy.device.type == "cuda"
    rows = next(iter(obs.values())).shape[0]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(policy.device)

    wire = codec.dumps(obs)
    decoded = codec.loads(wire)
    with torch.inference_mode():
        inputs = policy._inputs_cuda(decoded) if cuda else policy._inputs_cpu(decoded)
        out = policy.model(inputs)
        sync()

        def h2d() -> None:
            (policy._inputs_cuda if cuda else policy._inputs_cpu)(decoded)
            sync()

        def forward() -> None:
            policy.model(inputs)
            sync()

        actions = policy._outputs(out, rows)
        stages = {
            "decode_ms": _median_ms(lambda: codec.loads(wire)),
            "h2d_ms": _median_ms(h2d),
            "forward_ms": _median_ms(forward),
            "d2h_ms": _median_ms(lambda: policy._outputs(out, rows)),
            "encode_ms": _median_ms(lambda: codec.dumps({"actions": actions})),
        }
    return stages


def _pool_rate(
    settings: RedisSettings, ckpt: Path, device: str, batch: int, obs: dict[str, np.ndarray],
    seconds: float,
) -> float:  # fmt: skip
    from arena_eval.sim_worker.client import PolicyClient

    url = resolve_url(settings)
    pool = f"bench-rows-{uuid.uuid4().hex[:8]}"
    serve = ["-m", "arena_eval.cli", "policy", "serve", "--pool", pool, "--policy", "torch",
             "--policy-arg", f"path={ckpt}", "--policy-arg", f"device={device}",
             "--max-batch", str(max(batch, 1))]  # fmt: skip
    env = {"ARENA_REDIS_URL": url, "ARENA_PREFIX": settings.prefix}
    ids = list(range(batch))
    with _child(serve, env):
        client = PolicyClient(pool, settings.with_url(url), timeout_s=120)
        try:
            return _rate(lambda: client.infer(obs, ids, **ROW_CONTEXT), batch, seconds)
        finally:
            client.close()


def run_policy_rows(
    *,
    batches: Sequence[int] = (1, 8, 64, 256),
    devices: Sequence[str] = ("cpu", "cuda"),
    model: str = "mlp",
    checkpoint: str | None = None,
    seconds: float = 2.0,
    pool: bool = True,
    settings: RedisSettings | None = None,
) -> dict[str, Any]:
    """Rows/s per (device, batch): the model alone and through a pool; a per-stage profile."""
    import torch

    from arena_eval.policy_worker.builtins.torch_policy import TorchPolicy, torch_device_summary
    from arena_eval.policy_worker.policy import Batch

    rng = np.random.default_rng(0)
    skipped = {}
    usable = []
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            skipped[device] = "CUDA is not available on this machine"
        else:
            usable.append(device)
    with tempfile.TemporaryDirectory(prefix="arena-bench-") as tmp:
        ckpt = Path(checkpoint) if checkpoint else make_checkpoint(Path(tmp) / "m.pt2", model)
        rows: list[dict[str, Any]] = []
        for device in usable:
            policy = TorchPolicy(str(ckpt), device=device)
            spec = policy.spec()
            for batch in batches:
                obs = _obs(spec, batch, rng)
                request = Batch.of(obs)
                direct = _rate(partial(policy.infer, request), batch, seconds)
                row: dict[str, Any] = {
                    "device": device,
                    "batch": batch,
                    "model_rows_per_s": round(direct, 1),
                    **_profile(policy, obs),
                }
                if pool:
                    settings = settings or RedisSettings.from_env()
                    rate = _pool_rate(settings, ckpt, device, batch, obs, seconds)
                    row["pool_rows_per_s"] = round(rate, 1)
                rows.append(row)
            policy.close()
        return {
            "model": "checkpoint" if checkpoint else model,
            "checkpoint_bytes": ckpt.stat().st_size,
            "torch": torch_device_summary(),
            "rows": rows,
            "skipped": skipped,
        }


def format_table(result: dict[str, Any]) -> str:
    cols = ["device", "batch", "model_rows_per_s", "pool_rows_per_s", "decode_ms", "h2d_ms",
            "forward_ms", "d2h_ms", "encode_ms"]  # fmt: skip
    present = [c for c in cols if any(c in r for r in result["rows"])]
    lines = [" ".join(f"{c:>{len(c)}}" for c in present)]
    for r in result["rows"]:
        lines.append(" ".join(f"{r.get(c, '-')!s:>{len(c)}}" for c in present))
    for device, why in result["skipped"].items():
        lines.append(f"{device}: skipped ({why})")
    lines.append(f"{result['torch']}; checkpoint {result['checkpoint_bytes']} bytes")
    return "\n".join(lines)
