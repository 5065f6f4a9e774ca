"""Serve PyTorch checkpoints (``torch`` policy): the runtime around a loaded model.

Which files are checkpoints, and how they carry their ``PolicySpec``, is
``torch_checkpoint``'s business (its docstring has the conventions; import the
``save_*`` helpers from there). This module is about running the model fast and
safely:

* On CUDA, observations go through reusable pinned host buffers with
  ``non_blocking`` copies, and actions come back through a pinned buffer and
  one stream sync -- the copies are a large share of a small policy's latency.
* Observation arrays may be read-only views of a network buffer. On CPU they
  are wrapped zero-copy (``torch.from_numpy``) with PyTorch's "not writable"
  warning silenced in a narrow context; models must not modify their inputs.
* ``dtype=bf16/fp16`` runs the forward pass under ``torch.autocast``; actions
  are still returned in the spec's ``action_dtype``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from arena_eval.broker.errors import ArenaEvalError, ConfigError
from arena_eval.broker.spec import PolicySpec, SpecMismatch
from arena_eval.policy_worker.builtins.args import parse_bool, parse_dtype, parse_int
from arena_eval.policy_worker.builtins.torch_checkpoint import (
    ModelFn,
    load_model,
    torch_dtype,
)
from arena_eval.policy_worker.policy import ArgDoc, Batch, Policy, check_actions

try:
    import torch
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        f"the 'torch' policy needs PyTorch ({_exc}); install it with: "
        "pip install 'arena-eval[policy]'"
    ) from _exc

__all__ = ["TorchPolicy", "resolve_device", "torch_device_summary"]

_AUTOCAST = {
    "fp32": None,
    "float32": None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


# -- devices --------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``'auto'`` (cuda if available, else cpu), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``."""
    if isinstance(device, torch.device):
        device = str(device)
    text = device.strip().lower()
    if text in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            f"device: {device!r} requested but CUDA is not available (torch {torch.__version__}, "
            f"{build}); use device=cpu or device=auto"
        )
    index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device: {device!r} requested but only {count} CUDA device(s) exist")
    return torch.device("cuda", index)


def torch_device_summary() -> str:
    """One line for logs: torch version, CUDA devices (name, memory, arch) or why none, threads."""
    parts = [f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        cudnn = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
        parts.append(f"CUDA {torch.version.cuda}, cuDNN {cudnn}")
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            parts.append(
                f"cuda:{i} {props.name} ({props.total_memory / 2**30:.0f} GiB, "
                f"sm_{props.major}{props.minor})"
            )
    elif torch.version.cuda:
        parts.append(f"CUDA not available (built for CUDA {torch.version.cuda})")
    else:
        parts.append("CUDA not available (CPU-only build)")
    parts.append(f"{torch.get_num_threads()} CPU threads")
    return ", ".join(parts)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the policy ------------------------------------------------------------------------
class _PinnedStaging:
    """Reusable pinned host buffers, one per name, grown (to a power-of-two row count)."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def view(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        numel = int(np.prod(shape, dtype=np.int64))
        buf = self.buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            rows = max(int(shape[0]) if shape else 1, 1)
            per_row = numel // rows if rows else numel
            capacity = max(numel, per_row * (1 << (rows - 1).bit_length()), 1)
            buf = torch.empty(capacity, dtype=dtype, pin_memory=True)
            self.buffers[name] = buf
        return buf[:numel].view(shape)


class TorchPolicy(Policy):
    """A PyTorch checkpoint served as a policy (formats: see ``torch_checkpoint``).

    Arguments (strings from ``--policy-arg``):

    * ``path`` (required): the checkpoint file.
    * ``device``: ``auto`` (default: cuda if available, else cpu), ``cpu``,
      ``cuda`` or ``cuda:N``.
    * ``dtype``: ``fp32`` (default, no autocast), ``bf16`` or ``fp16``: run
      the forward pass under ``torch.autocast``; actions are still returned in
      the spec's ``action_dtype``.
    * ``spec_path``: a PolicySpec JSON file that overrides the checkpoint's.
    * ``format``: ``auto`` (default, from the archive contents),
      ``torchscript``, ``export`` or ``state_dict``.
    * ``warmup``: ``1`` (default) runs one all-zero row through the model at
      load, so a model that disagrees with its spec fails at startup (needs a
      spec with observations).
    * ``threads``: ``torch.set_num_threads`` for CPU inference (default: torch's).
    * ``copy_inputs``: ``0`` (default) wraps CPU inputs zero-copy; ``1`` copies
      read-only ones first, for models that modify their inputs in place
      (against the convention). On CUDA inputs are always copied (pinned staging).
    * ``allow_model``: model classes (``package.module:Class``, comma-separated)
      a state-dict checkpoint may name besides arena-eval's own ``BCPolicyNet``;
      a state dict naming any other class is refused before anything is
      imported (see ``torch_checkpoint``).

    ``infer`` runs under ``torch.inference_mode()``. One instance is used by one
    thread: the pinned staging buffers are reused across calls.
    """

    ARGS = {
        "path": ArgDoc("file", "The checkpoint (TorchScript, torch.export or state_dict)."),
        "device": ArgDoc("auto|cpu|cuda[:N]", "Where to run; auto: cuda if available, else cpu."),
        "dtype": ArgDoc("fp32|bf16|fp16", "Autocast dtype of the forward pass."),
        "spec_path": ArgDoc("file", "A PolicySpec JSON file that overrides the checkpoint's."),
        "format": ArgDoc(
            "auto|torchscript|export|state_dict", "Checkpoint format; auto: from its contents."
        ),
        "warmup": ArgDoc("bool", "Run one all-zero row at load, so a bad model fails at start."),
        "threads": ArgDoc("int >= 1", "torch.set_num_threads for CPU inference."),
        "copy_inputs": ArgDoc("bool", "Copy read-only inputs first, for models that modify them."),
        "allow_model": ArgDoc(
            "pkg.mod:Class[,...]",
            "State dicts only: model classes the file may name besides arena-eval's own.",
        ),
    }

    def __init__(
        self,
        path: str,
        device: str = "auto",
        dtype: str = "fp32",
        spec_path: str | None = None,
        format: str = "auto",
        warmup: str | bool = True,
        threads: str | int | None = None,
        copy_inputs: str | bool = False,
        allow_model: str | None = None,
    ) -> None:
        self._device = resolve_device(device)
        key = dtype.strip().lower()
        if key not in _AUTOCAST:
            raise ConfigError(f"dtype: expected 'fp32', 'bf16' or 'fp16', got {dtype!r}")
        self._autocast_dtype = _AUTOCAST[key]
        self._dtype_key = "fp32" if self._autocast_dtype is None else str(self._autocast_dtype)
        self._checkpoint_sha256: str | None = None
        if threads is not None:
            torch.set_num_threads(parse_int(threads, "threads", minimum=1))
        self._model, self._spec, self._format = load_model(
            path, device=self._device, format=format, spec_path=spec_path, allow_models=allow_model
        )
        self._path = str(path)
        self._action_dtype = np.dtype(parse_dtype(self._spec.action_dtype, "spec action_dtype"))
        self._torch_action_dtype = torch_dtype(self._action_dtype)
        self._cuda = self._device.type == "cuda"
        self._staging = _PinnedStaging() if self._cuda else None
        self._copy_inputs = parse_bool(copy_inputs, "copy_inputs")
        if parse_bool(warmup, "warmup") and self._spec.observations is not None:
            self._warmup()

    # -- properties --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def checkpoint_format(self) -> str:
        return self._format

    @property
    def model(self) -> ModelFn:
        return self._model

    def spec(self) -> PolicySpec:
        return self._spec

    def identity_params(self) -> dict[str, str]:
        """The checkpoint by content (not path: hosts differ) and the autocast dtype."""
        if self._checkpoint_sha256 is None:
            self._checkpoint_sha256 = _file_sha256(self._path)
        return {"checkpoint_sha256": self._checkpoint_sha256, "dtype": self._dtype_key}

    # -- inference ---------------------------------------------------------------------
    def infer(self, batch: Batch) -> np.ndarray:
        rows = batch.rows
        obs = batch.obs
        try:
            with torch.inference_mode(), self._autocast():
                inputs = self._inputs_cuda(obs) if self._cuda else self._inputs_cpu(obs)
                out = self._model(inputs)
                actions = self._outputs(out, rows)  # on cuda: ends with a stream sync
        except BaseException:
            if self._cuda:
                # The staging buffers are reused next call: no copy may still be in flight.
                torch.cuda.current_stream(self._device).synchronize()
            raise
        return check_actions(self._spec, actions, rows)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device.type, dtype=self._autocast_dtype)

    @staticmethod
    def _wrappable(arr: np.ndarray) -> np.ndarray:
        arr = np.asarray(arr)
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if any(s < 0 for s in arr.strides):  # torch.from_numpy rejects negative strides
            arr = np.ascontiguousarray(arr)
        return arr

    def _inputs_cpu(self, batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        arrays = {k: self._wrappable(v) for k, v in batch.items()}
        if self._copy_inputs:
            arrays = {k: a if a.flags.writeable else a.copy() for k, a in arrays.items()}
        if all(a.flags.writeable for a in arrays.values()):
            return {k: torch.from_numpy(a) for k, a in arrays.items()}
        # Zero-copy view of a read-only buffer: torch warns because it cannot mark the
        # tensor read-only. The model contract says inputs are not modified.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="The given NumPy array is not writable", category=UserWarning
            )
            return {k: torch.from_numpy(a) for k, a in arrays.items()}

    def _inputs_cuda(self, batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        assert self._staging is not None
        out: dict[str, torch.Tensor] = {}
        for key, value in batch.items():
            arr = np.asarray(value)
            host = self._staging.view(f"in:{key}", torch_dtype(arr.dtype), arr.shape)
            np.copyto(host.numpy(), arr, casting="equiv")  # "equiv": byte order may differ
            out[key] = host.to(self._device, non_blocking=True)
        return out

    def _outputs(self, out: object, rows: int) -> np.ndarray:
        if not isinstance(out, torch.Tensor):
            raise SpecMismatch(
                f"model returned a {type(out).__name__}, expected a Tensor of shape "
                f"{[rows, *self._spec.action_shape]} (B, H, A)"
            )
        expected = (rows, *self._spec.action_shape)
        if tuple(out.shape) != expected:
            raise SpecMismatch(
                f"model returned a tensor of shape {list(out.shape)}, expected "
                f"{list(expected)} (B, H, A) per the spec of {self._spec.name!r}"
            )
        out = out.to(dtype=self._torch_action_dtype)
        if not self._cuda:
            return np.ascontiguousarray(out.cpu().numpy())
        assert self._staging is not None
        host = self._staging.view("out", self._torch_action_dtype, expected)
        host.copy_(out, non_blocking=True)
        torch.cuda.current_stream(self._device).synchronize()
        actions: np.ndarray = host.numpy().copy()  # the pinned buffer is reused next call
        return actions

    def _warmup(self) -> None:
        assert self._spec.observations is not None
        batch = Batch.of(
            {
                key: np.zeros((1, *field.shape), dtype=field.dtype)
                for key, field in self._spec.observations.items()
            }
        )
        try:
            self.infer(batch)
        except ArenaEvalError as exc:
            raise ConfigError(
                f"checkpoint {self._path!r}: the model disagrees with its spec: {exc}"
            ) from None
        except Exception as exc:
            raise ConfigError(
                f"checkpoint {self._path!r}: a warm-up forward pass with one all-zero row per "
                f"the spec failed: {type(exc).__name__}: {exc} (pass warmup=0 to skip it)"
            ) from exc

    def close(self) -> None:
        self._model = _closed
        if self._staging is not None:
            self._staging.buffers.clear()
        if self._cuda:
            torch.cuda.empty_cache()


def _closed(obs: dict[str, torch.Tensor]) -> Any:
    raise ArenaEvalError("this torch policy was closed; load it again to use it")
