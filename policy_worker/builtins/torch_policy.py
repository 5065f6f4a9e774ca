"""Serve PyTorch checkpoints (``torch`` policy), and write checkpoints it can serve.

Why this shape:

* Three checkpoint formats, because models arrive in all three: TorchScript
  (``torch.jit.save``; deprecated upstream but widespread), ``torch.export``
  archives (``.pt2``; the forward-looking format) and plain state dicts (what
  training code has). A checkpoint carries its ``PolicySpec`` so a pool can
  announce its contract without extra flags; ``spec_path=`` overrides it.
* State dicts are loaded with ``torch.load(weights_only=True)`` only: a
  checkpoint names an importable model class, it never carries pickled code.
* On CUDA, observations go through reusable pinned host buffers with
  ``non_blocking`` copies, and actions come back through a pinned buffer and
  one stream sync -- the copies are a large share of a small policy's latency.
* Observation arrays may be read-only views of a network buffer. On CPU they
  are wrapped zero-copy (``torch.from_numpy``) with PyTorch's "not writable"
  warning silenced in a narrow context; models must not modify their inputs.

Checkpoint conventions
----------------------
Model call: ``model(obs: dict[str, Tensor]) -> Tensor`` of shape ``(B, H, A)``.
Each observation tensor has the dtype and per-row shape of the spec (uint8
images stay uint8: normalising is the model's job) and lives on the policy's
device. The output is cast to the spec's ``action_dtype``.

* state dict: ``torch.save({"format": "arena-eval/state_dict-v1",
  "model": "package.module:Class", "model_kwargs": {...}, "state_dict":
  module.state_dict(), "spec": PolicySpec.to_dict()}, path)``. Loading imports
  ``Class``, calls ``Class(**model_kwargs)`` and ``load_state_dict(strict=True)``.
  ``model_kwargs`` must be plain data (str/int/float/bool/None/list/tuple/dict).
  Written by ``save_state_dict_checkpoint``.
* TorchScript: the spec JSON is the extra file ``arena_spec.json``
  (``torch.jit.save(..., _extra_files=...)``). Written by ``save_torchscript``.
* torch.export (``.pt2``): the spec JSON is the extra file ``arena_spec.json``
  (``torch.export.save(..., extra_files=...)``), the batch dimension is
  dynamic. Written by ``save_exported``.
* Any format: a sidecar ``<path>.spec.json`` is used when the checkpoint
  embeds no spec, and the ``spec_path`` argument beats both.

``save_checkpoint`` picks the writer by ``format`` or file extension.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from arena_eval.broker.errors import ArenaEvalError, ConfigError
from arena_eval.broker.spec import PolicySpec, SpecMismatch
from arena_eval.policy_worker.builtins.args import parse_bool, parse_dtype, parse_int
from arena_eval.policy_worker.policy import Policy, batch_rows, check_actions
from arena_eval.policy_worker.registry import import_object

try:
    import torch
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        f"the 'torch' policy needs PyTorch ({_exc}); install it with: "
        "pip install 'arena-eval[policy]'"
    ) from _exc

__all__ = [
    "SPEC_FILE",
    "STATE_DICT_FORMAT",
    "TorchPolicy",
    "detect_format",
    "load_model",
    "resolve_device",
    "save_checkpoint",
    "save_exported",
    "save_state_dict_checkpoint",
    "save_torchscript",
    "torch_device_summary",
    "write_sidecar_spec",
]

STATE_DICT_FORMAT = "arena-eval/state_dict-v1"
SPEC_FILE = "arena_spec.json"
SIDECAR_SUFFIX = ".spec.json"
FORMATS = ("torchscript", "export", "state_dict")
_FORMAT_ALIASES = {
    "auto": "auto",
    "torchscript": "torchscript",
    "jit": "torchscript",
    "export": "export",
    "pt2": "export",
    "state_dict": "state_dict",
    "state-dict": "state_dict",
}
_AUTOCAST = {
    "fp32": None,
    "float32": None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}
_CHECKPOINT_KINDS = "a TorchScript archive, a torch.export .pt2 archive or an arena-eval state dict"

ModelFn = Callable[[dict[str, torch.Tensor]], Any]


# -- small helpers ---------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_jit_deprecation() -> Iterator[None]:
    """TorchScript is deprecated upstream; serving a TorchScript file is still deliberate."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".?torch\.jit\.\w+.? is deprecated", category=DeprecationWarning
        )
        yield


@functools.lru_cache(maxsize=64)
def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    native = dtype if dtype.isnative else dtype.newbyteorder("=")
    return torch.from_numpy(np.empty(0, dtype=native)).dtype


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


# -- reading checkpoints ---------------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """``'torchscript'``, ``'export'`` or ``'state_dict'``, from the archive's contents."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return "state_dict"  # legacy (non-zip) torch.save file, or garbage: torch.load will tell
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"checkpoint {str(path)!r} is not readable: {exc}") from None
    inner = {name.split("/", 1)[-1] for name in names}
    if "archive_format" in inner:
        return "export"
    if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
        return "torchscript"
    if "data.pkl" in inner:
        return "state_dict"
    raise ConfigError(f"checkpoint {str(path)!r} is a zip archive but not {_CHECKPOINT_KINDS}")


def _spec_from_text(text: str | bytes, where: str) -> PolicySpec:
    try:
        return PolicySpec.from_json(text)
    except ConfigError as exc:
        raise ConfigError(f"policy spec in {where}: {exc}") from None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _load_spec_file(path: Path, what: str) -> PolicySpec:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {str(path)!r}: {exc}") from None
    return _spec_from_text(text, repr(str(path)))


def _load_torchscript(path: Path, device: torch.device) -> tuple[ModelFn, str | None]:
    extra: dict[str, Any] = {SPEC_FILE: ""}
    try:
        with _quiet_jit_deprecation():
            module = torch.jit.load(  # type: ignore[no-untyped-call]
                str(path), map_location=device, _extra_files=extra
            )
    except (RuntimeError, ValueError, OSError) as exc:
        raise ConfigError(
            f"checkpoint {str(path)!r} could not be loaded as TorchScript: {exc}"
        ) from None
    module.eval()
    raw = extra.get(SPEC_FILE) or None
    return module, (raw.decode() if isinstance(raw, bytes) else raw)


def _load_exported(path: Path, device: torch.device) -> tuple[ModelFn, str | None]:
    extra: dict[str, Any] = {SPEC_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        module = program.module()
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        raise ConfigError(
            f"checkpoint {str(path)!r} could not be loaded as a torch.export archive: {exc}"
        ) from None
    raw = extra.get(SPEC_FILE) or None
    return module, (raw.decode() if isinstance(raw, bytes) else raw)


def _load_state_dict(path: Path, device: torch.device) -> tuple[ModelFn, PolicySpec | None]:
    where = repr(str(path))
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ... vary by version
        raise ConfigError(
            f"checkpoint {where} could not be read with torch.load(weights_only=True): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            f"Expected {_CHECKPOINT_KINDS} (arena-eval never unpickles arbitrary objects; "
            "write checkpoints with save_checkpoint)"
        ) from None
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != STATE_DICT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ConfigError(
            f"checkpoint {where} is a torch.save file but not an arena-eval state dict "
            f"(format {found!r}, expected {STATE_DICT_FORMAT!r}): save it as "
            '{"format": ..., "model": "package.module:Class", "model_kwargs": {...}, '
            '"state_dict": ..., "spec": PolicySpec.to_dict()} (see save_state_dict_checkpoint)'
        )
    target = ckpt.get("model")
    kwargs = ckpt.get("model_kwargs") or {}
    state = ckpt.get("state_dict")
    if not isinstance(target, str):
        raise ConfigError(f"checkpoint {where}: 'model' must be a 'package.module:Class' string")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"checkpoint {where}: 'model_kwargs' must be a dict with string keys")
    if not isinstance(state, Mapping):
        raise ConfigError(f"checkpoint {where}: 'state_dict' is missing or not a mapping")
    cls = import_object(target)
    if not callable(cls):
        raise ConfigError(f"checkpoint {where}: model {target!r} is not a class")
    try:
        model = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"checkpoint {where}: {target}(**model_kwargs) failed: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"checkpoint {where}: {target} built a {type(model).__name__}, not a torch.nn.Module"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint {where}: state dict does not fit {target}: {exc}") from None
    model.to(device).eval()
    spec_data = ckpt.get("spec")
    spec = None
    if spec_data is not None:
        if not isinstance(spec_data, Mapping):
            raise ConfigError(f"checkpoint {where}: 'spec' must be a PolicySpec.to_dict() dict")
        try:
            spec = PolicySpec.from_dict(spec_data)
        except ConfigError as exc:
            raise ConfigError(f"policy spec in {where}: {exc}") from None
    return model, spec


def load_model(
    path: str | Path,
    *,
    device: torch.device,
    format: str = "auto",
    spec_path: str | Path | None = None,
) -> tuple[ModelFn, PolicySpec, str]:
    """Load a checkpoint onto ``device``: returns (callable model, spec, format)."""
    path = Path(path).expanduser()
    fmt = _FORMAT_ALIASES.get(format.strip().lower())
    if fmt is None:
        raise ConfigError(
            f"format: expected 'auto', 'torchscript', 'export' or 'state_dict', got {format!r}"
        )
    if not path.exists():
        raise ConfigError(f"path: checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"path: checkpoint {str(path)!r} is not a file")
    if fmt == "auto":
        fmt = detect_format(path)

    embedded: PolicySpec | None = None
    model: ModelFn
    if fmt in ("torchscript", "export"):
        loader = _load_torchscript if fmt == "torchscript" else _load_exported
        model, text = loader(path, device)
        if text and spec_path is None:  # an override wins even over a malformed embedded spec
            embedded = _spec_from_text(text, f"{str(path)!r} ({SPEC_FILE})")
    else:
        model, embedded = _load_state_dict(path, device)

    if spec_path is not None:
        spec = _load_spec_file(Path(spec_path).expanduser(), "spec_path")
    elif embedded is not None:
        spec = embedded
    elif _sidecar(path).is_file():
        spec = _load_spec_file(_sidecar(path), "sidecar spec")
    else:
        raise ConfigError(
            f"checkpoint {str(path)!r} ({fmt}) carries no policy spec: pass "
            f"spec_path=<file with PolicySpec JSON>, put one in {str(_sidecar(path))!r}, or "
            "re-save it with save_checkpoint(..., spec)"
        )
    return model, spec, fmt


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
    """A PyTorch checkpoint served as a policy (see the module docstring for formats).

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

    ``infer`` runs under ``torch.inference_mode()``. One instance is used by one
    thread: the pinned staging buffers are reused across calls.
    """

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
    ) -> None:
        self._device = resolve_device(device)
        key = dtype.strip().lower()
        if key not in _AUTOCAST:
            raise ConfigError(f"dtype: expected 'fp32', 'bf16' or 'fp16', got {dtype!r}")
        self._autocast_dtype = _AUTOCAST[key]
        if threads is not None:
            torch.set_num_threads(parse_int(threads, "threads", minimum=1))
        self._model, self._spec, self._format = load_model(
            path, device=self._device, format=format, spec_path=spec_path
        )
        self._path = str(path)
        self._action_dtype = np.dtype(parse_dtype(self._spec.action_dtype, "spec action_dtype"))
        self._torch_action_dtype = _torch_dtype(self._action_dtype)
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

    # -- inference ---------------------------------------------------------------------
    def infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        rows = batch_rows(batch)
        try:
            with torch.inference_mode(), self._autocast():
                inputs = self._inputs_cuda(batch) if self._cuda else self._inputs_cpu(batch)
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
            host = self._staging.view(f"in:{key}", _torch_dtype(arr.dtype), arr.shape)
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
        batch = {
            key: np.zeros((1, *field.shape), dtype=field.dtype)
            for key, field in self._spec.observations.items()
        }
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


# -- writing checkpoints ---------------------------------------------------------------
def _check_plain(value: object, where: str) -> None:
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: key {k!r} is not a string")
            _check_plain(item, f"{where}[{k!r}]")
        return
    raise ConfigError(
        f"{where} is a {type(value).__name__}; model_kwargs must be plain data "
        "(str, int, float, bool, None, list, tuple, dict) to load with weights_only=True"
    )


def save_state_dict_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    spec: PolicySpec,
    *,
    model_target: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write the arena-eval state-dict checkpoint (see the module docstring).

    ``model_target`` defaults to the model's ``module:QualName``; classes from
    ``__main__`` or defined inside functions cannot be imported by a worker,
    so they need an explicit target.
    """
    cls = type(model)
    target = model_target or f"{cls.__module__}:{cls.__qualname__}"
    if (cls.__module__ == "__main__" and model_target is None) or "<locals>" in target:
        raise ConfigError(
            f"model class {target!r} cannot be imported by a policy worker; define it in an "
            "importable module or pass model_target='package.module:Class'"
        )
    kwargs = dict(model_kwargs or {})
    _check_plain(kwargs, "model_kwargs")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    torch.save(
        {
            "format": STATE_DICT_FORMAT,
            "model": target,
            "model_kwargs": kwargs,
            "state_dict": state,
            "spec": spec.to_dict(),
        },
        str(path),
    )
    return path


def save_torchscript(
    path: str | Path, model: torch.nn.Module | torch.jit.ScriptModule, spec: PolicySpec
) -> Path:
    """Script ``model`` (unless it already is) and save it with the spec embedded."""
    model.eval()
    with _quiet_jit_deprecation():
        scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.script(model)
        path = Path(path)
        torch.jit.save(scripted, str(path), _extra_files={SPEC_FILE: spec.to_json()})
    return path


def _example_obs(spec: PolicySpec, rows: int = 2) -> dict[str, torch.Tensor]:
    if spec.observations is None:
        raise ConfigError(
            "save_exported needs example observations: the spec accepts any observations, "
            "so pass example_obs={key: array or tensor with a batch dimension}"
        )
    return {
        key: torch.zeros((rows, *field.shape), dtype=_torch_dtype(np.dtype(field.dtype)))
        for key, field in spec.observations.items()
    }


def save_exported(
    path: str | Path,
    model: torch.nn.Module | torch.export.ExportedProgram,
    spec: PolicySpec,
    *,
    example_obs: Mapping[str, np.ndarray | torch.Tensor] | None = None,
) -> Path:
    """``torch.export`` ``model`` with a dynamic batch dimension and save it as ``.pt2``.

    An ``ExportedProgram`` is saved as is (its batch dimension should be
    dynamic). Otherwise example inputs come from ``example_obs`` or, by
    default, two all-zero rows built from the spec.
    """
    if isinstance(model, torch.export.ExportedProgram):
        program = model
    else:
        if example_obs is None:
            example = _example_obs(spec)
        else:
            example = {
                k: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.array(v))
                for k, v in example_obs.items()
            }
        batch = torch.export.Dim("batch")
        dynamic = ({key: {0: batch} for key in example},)
        model.eval()
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
    path = Path(path)
    torch.export.save(program, str(path), extra_files={SPEC_FILE: spec.to_json()})
    return path


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    spec: PolicySpec,
    *,
    format: str | None = None,
    **kwargs: Any,
) -> Path:
    """Save in ``format`` (``torchscript``, ``export``, ``state_dict``) or by extension.

    Without ``format``: ``.pt2`` -> export, ``.ts``/``.jit``/``.torchscript`` ->
    TorchScript, anything else -> state dict. ``kwargs`` go to the writer
    (``model_target``/``model_kwargs`` for state dicts, ``example_obs`` for export).
    """
    path = Path(path)
    if format is None:
        suffix = path.suffix.lower()
        fmt = {".pt2": "export", ".ts": "torchscript", ".jit": "torchscript"}.get(
            suffix, "torchscript" if suffix == ".torchscript" else "state_dict"
        )
    else:
        fmt = _FORMAT_ALIASES.get(format.strip().lower(), "")
    if fmt == "export":
        return save_exported(path, model, spec, **kwargs)
    if fmt == "torchscript":
        if kwargs:
            raise ConfigError(f"save_torchscript takes no extra arguments, got {sorted(kwargs)}")
        return save_torchscript(path, model, spec)
    if fmt == "state_dict":
        return save_state_dict_checkpoint(path, model, spec, **kwargs)
    raise ConfigError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")


def write_sidecar_spec(checkpoint: str | Path, spec: PolicySpec) -> Path:
    """Write ``<checkpoint>.spec.json`` for a checkpoint made elsewhere (no embedded spec)."""
    sidecar = _sidecar(Path(checkpoint))
    sidecar.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n", "utf-8")
    return sidecar
