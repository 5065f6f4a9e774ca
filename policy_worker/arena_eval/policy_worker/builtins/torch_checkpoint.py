"""Read and write the checkpoints the ``torch`` policy serves.

Why a module of its own: which files count as a policy checkpoint, and how a
checkpoint carries its ``PolicySpec``, is a contract with training code --
it is what people write, long before anything is served. The runtime that
serves a loaded model (devices, pinned buffers, inference) lives in
``torch_policy``; this module only turns files into ``(model, spec)`` and back.

Why three formats: models arrive in all three. TorchScript
(``torch.jit.save``; deprecated upstream but widespread), ``torch.export``
archives (``.pt2``; the forward-looking format) and plain state dicts (what
training code has). A checkpoint carries its ``PolicySpec`` so a pool can
announce its contract without extra flags; ``spec_path=`` overrides it.

Why ``weights_only``: state dicts are loaded with
``torch.load(weights_only=True)`` only, because a full unpickle runs whatever
code the file asks for. So a state-dict checkpoint never carries pickled code:
it *names* an importable model class (``package.module:Class``) and gives
plain-data constructor arguments, and the Python that runs is the installed
package's, not the file writer's. That is also why ``model_kwargs`` must be
plain data, and why ``save_state_dict_checkpoint`` refuses classes a worker
could not import (``__main__``, classes defined inside functions).

Why an allowlist of model classes: ``weights_only`` alone is not enough. The
file names what to import and call, so a file naming ``os:system`` with
``model_kwargs={"command": ...}`` would run a shell command at load. A state
dict may therefore only name arena-eval's own models (``TRUSTED_MODELS``) or
classes the operator allows by name (``allow_models``, the policy's
``allow_model=`` argument); nothing else is imported at all (importing a module
runs its code), and an allowed name must still be a ``torch.nn.Module``
subclass before it is called.

Checkpoint conventions
----------------------
Model call: ``model(obs: dict[str, Tensor]) -> Tensor`` of shape ``(B, H, A)``.
Each observation tensor has the dtype and per-row shape of the spec (uint8
images stay uint8: normalising is the model's job) and lives on the policy's
device. The output is cast to the spec's ``action_dtype``.

* state dict: ``torch.save({"format": "arena-eval/state_dict-v1",
  "model": "package.module:Class", "model_kwargs": {...}, "state_dict":
  module.state_dict(), "spec": PolicySpec.to_dict()}, path)``. Loading imports
  ``Class`` (only if trusted or allowed, see above), checks that it is a
  ``torch.nn.Module`` subclass, calls ``Class(**model_kwargs)`` and
  ``load_state_dict(strict=True)``.
  ``model_kwargs`` must be plain data (str/int/float/bool/None/list/tuple/dict).
  Written by ``save_state_dict_checkpoint``.
* TorchScript: the spec JSON is the extra file ``arena_spec.json``
  (``torch.jit.save(..., _extra_files=...)``). Written by ``save_torchscript``.
* torch.export (``.pt2``): the spec JSON is the extra file ``arena_spec.json``
  (``torch.export.save(..., extra_files=...)``), the batch dimension is
  dynamic. Written by ``save_exported``.
* Any format: a sidecar ``<path>.spec.json`` is used when the checkpoint
  embeds no spec, and the ``spec_path`` argument beats both.

``save_checkpoint`` picks the writer by ``format`` or file extension;
``load_model`` detects the format from the archive's contents unless told.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.spec import PolicySpec
from arena_eval.policy_worker.registry import import_object

try:
    import torch
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        f"the 'torch' policy needs PyTorch ({_exc}); install it with: "
        "pip install 'arena-eval[policy]'"
    ) from _exc

__all__ = [
    "FORMATS",
    "SIDECAR_SUFFIX",
    "SPEC_FILE",
    "STATE_DICT_FORMAT",
    "TRUSTED_MODELS",
    "ModelFn",
    "detect_format",
    "load_model",
    "parse_allowed_models",
    "save_checkpoint",
    "save_exported",
    "save_state_dict_checkpoint",
    "save_torchscript",
    "torch_dtype",
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
#: Model classes a state-dict checkpoint may name without the operator allowing them:
#: the ones arena-eval's own writers put there (``training.export``).
TRUSTED_MODELS: frozenset[str] = frozenset({"arena_eval.policy_worker.training.models:BCPolicyNet"})
_TARGET_SYNTAX = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_CHECKPOINT_KINDS = "a TorchScript archive, a torch.export .pt2 archive or an arena-eval state dict"

#: What ``load_model`` returns: call it with the observation tensors (see the conventions).
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
def torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    """The torch dtype holding ``dtype``'s values (byte order aside: torch is native-only)."""
    native = dtype if dtype.isnative else dtype.newbyteorder("=")
    return torch.from_numpy(np.empty(0, dtype=native)).dtype


# -- reading checkpoints ---------------------------------------------------------------
def parse_allowed_models(value: str | Iterable[str] | None) -> frozenset[str]:
    """``'pkg.mod:Class,other.mod:Net'`` (or an iterable of such names) -> a set of names."""
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = frozenset(item.strip() for item in items if item.strip())
    for name in sorted(names):
        if not _TARGET_SYNTAX.fullmatch(name):
            raise ConfigError(
                f"allow_model: {name!r} is not a 'package.module:Class' name; pass the "
                "exact import path of the torch.nn.Module class (several: comma-separated)"
            )
    return names


def _trusted_model_class(target: str, allowed: frozenset[str], where: str) -> type[torch.nn.Module]:
    """Import ``target`` only if it is trusted or allowed, and only if it is an nn.Module class."""
    if target not in TRUSTED_MODELS and target not in allowed:
        if not _TARGET_SYNTAX.fullmatch(target):  # never echo a malformed name as advice
            raise ConfigError(
                f"checkpoint {where} names model {target!r}, which is not a "
                "'package.module:Class' name; re-save it with save_checkpoint"
            )
        raise ConfigError(
            f"checkpoint {where} names model class {target!r}, which is neither one of "
            f"arena-eval's own models ({', '.join(sorted(TRUSTED_MODELS))}) nor allowed: a "
            "state-dict checkpoint runs the constructor it names, so only trusted classes are "
            "imported. If you trust this file and that class is a torch.nn.Module from a "
            f"package you installed, pass --policy-arg allow_model={target}; otherwise re-save "
            "the model as torch.export (.pt2) or TorchScript (.ts)"
        )
    cls = import_object(target)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        kind = f"class {cls.__qualname__}" if isinstance(cls, type) else type(cls).__name__
        raise ConfigError(
            f"checkpoint {where}: model {target!r} is not a torch.nn.Module subclass (it is "
            f"{kind}); refused without calling it. Name the model's torch.nn.Module class "
            "('package.module:Class')"
        )
    return cls


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


def _load_state_dict(
    path: Path, device: torch.device, allowed: frozenset[str]
) -> tuple[ModelFn, PolicySpec | None]:
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
    cls = _trusted_model_class(target, allowed, where)
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
    allow_models: str | Iterable[str] | None = None,
) -> tuple[ModelFn, PolicySpec, str]:
    """Load a checkpoint onto ``device``: returns (callable model, spec, format).

    ``allow_models``: model classes (``'package.module:Class'``) a state-dict
    checkpoint may name besides ``TRUSTED_MODELS`` (see the module docstring).
    """
    allowed = parse_allowed_models(allow_models)
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
        model, embedded = _load_state_dict(path, device, allowed)

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
        key: torch.zeros((rows, *field.shape), dtype=torch_dtype(np.dtype(field.dtype)))
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
