"""How one openpi observation dict becomes one row of a pool request, and the metadata frame.

openpi clients name their inputs after their own data sets
(``observation/image``, ``observation/wrist_image``, ``observation/state``,
``prompt``; ALOHA nests ``images/cam_high``), while a pool's spec names its
own keys. Guessing between the two would silently feed a camera into the
wrong input, so the mapping is explicit: ``openpi_key=spec_key`` pairs from
flags or a file. Only a key that already has the spec's name passes through
unmapped. Nested dicts are flattened with ``/`` first, so ``images/cam_high``
is one key. Two targets are special: ``@instruction`` (the row's language
instruction; ``prompt`` maps there by default) and ``@ignore``.

Each value is one unbatched row; it gains the batch dimension here and is
cast to the spec's dtype when numpy's ``same_kind`` rule allows it (LIBERO's
float64 state into a float32 spec), never against it (a float image into a
uint8 input is a mismatch, named with the key).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.spec import PolicySpec, SpecMismatch

__all__ = ["IGNORE", "INSTRUCTION", "KeyMap", "OpenpiRow", "metadata_frame"]

INSTRUCTION = "@instruction"
IGNORE = "@ignore"
_SPECIAL = (INSTRUCTION, IGNORE)


@dataclass(frozen=True)
class OpenpiRow:
    """One observation as the pool takes it: ``obs`` arrays of shape ``(1, ...)`` and the prompt."""

    obs: dict[str, np.ndarray]
    instruction: str


@dataclass(frozen=True)
class KeyMap:
    """openpi key -> spec key (or ``@instruction`` / ``@ignore``)."""

    pairs: Mapping[str, str] = field(default_factory=lambda: {"prompt": INSTRUCTION})

    @classmethod
    def build(cls, pairs: Iterable[str] = (), file: Path | None = None) -> KeyMap:
        """From ``--key openpi=spec`` flags and/or a JSON or ``openpi=spec``-lines file."""
        out: dict[str, str] = {"prompt": INSTRUCTION}
        if file is not None:
            out.update(_read_map_file(file))
        for pair in pairs:
            key, sep, target = pair.partition("=")
            if not sep or not key.strip() or not target.strip():
                raise ConfigError(f"--key {pair!r}: expected OPENPI_KEY=SPEC_KEY (or =@ignore)")
            out[key.strip()] = target.strip()
        for key, target in out.items():
            if target.startswith("@") and target not in _SPECIAL:
                raise ConfigError(f"key {key!r} maps to {target!r}; special targets: {_SPECIAL}")
        return cls(out)

    def check_against(self, spec: PolicySpec) -> None:
        """Fail at start-up (not on the first request) if a target is not one of the spec's keys."""
        if spec.observations is None:
            return
        for key, target in self.pairs.items():
            if target not in _SPECIAL and target not in spec.observations:
                raise ConfigError(
                    f"mapping {key}={target}: pool {spec.name!r} has no observation {target!r}; "
                    f"its keys are {sorted(spec.observations)}"
                )

    def to_row(self, message: Any, spec: PolicySpec) -> OpenpiRow:
        """Map one decoded request to one pool row; raise SpecMismatch with the key at fault."""
        if not isinstance(message, dict):
            raise SpecMismatch(
                f"an openpi request is a dict of observations, got {type(message).__name__}"
            )
        flat: dict[str, Any] = {}
        _flatten(message, "", flat)
        obs: dict[str, np.ndarray] = {}
        instruction = ""
        for key, value in flat.items():
            target = self.pairs.get(key, key)
            if target == IGNORE:
                continue
            if target == INSTRUCTION:
                instruction = _text(key, value)
                continue
            if target in obs:
                raise SpecMismatch(f"two openpi keys map to spec key {target!r} (one is {key!r})")
            obs[target] = _batched(key, target, value, spec)
        if spec.observations is not None:
            missing = sorted(set(spec.observations) - set(obs))
            unexpected = sorted(set(obs) - set(spec.observations))
            if missing or unexpected:
                hint = " ".join(f"--key {k}=SPEC_KEY" for k in unexpected[:3])
                raise SpecMismatch(
                    f"pool {spec.name!r} expects keys {sorted(spec.observations)}; after the "
                    f"mapping {dict(self.pairs)} the request lacks {missing} and has unmapped "
                    f"{unexpected}. Map them with {hint or '--key OPENPI_KEY=SPEC_KEY'} "
                    "(or =@ignore)"
                )
        return OpenpiRow(obs=obs, instruction=instruction)


def _flatten(value: Mapping[Any, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, item in value.items():
        name = f"{prefix}{key.decode() if isinstance(key, bytes) else key}"
        if isinstance(item, dict):
            _flatten(item, name + "/", out)
        else:
            out[name] = item


def _text(key: str, value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if not isinstance(value, str):
        raise SpecMismatch(f"{key!r} maps to the instruction but is a {type(value).__name__}")
    return str(value)


def _batched(key: str, target: str, value: Any, spec: PolicySpec) -> np.ndarray:
    if isinstance(value, str | bytes):
        raise SpecMismatch(
            f"openpi key {key!r} is text; map it with --key {key}=@instruction or =@ignore"
        )
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise SpecMismatch(f"openpi key {key!r} has dtype {arr.dtype}, not a numeric array")
    fs = None if spec.observations is None else spec.observations.get(target)
    if fs is not None:
        if tuple(arr.shape) != fs.shape:
            raise SpecMismatch(
                f"openpi key {key!r} -> {target!r}: shape {list(arr.shape)}, pool "
                f"{spec.name!r} expects {fs.describe()} per observation"
            )
        want = np.dtype(fs.dtype)
        if arr.dtype != want:
            if not np.can_cast(arr.dtype, want, "same_kind"):
                raise SpecMismatch(
                    f"openpi key {key!r} -> {target!r}: dtype {arr.dtype} cannot become the "
                    f"pool's {fs.dtype} without losing meaning"
                )
            arr = arr.astype(want)
    return arr[None]


def _read_map_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the key map {path}: {exc}") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"key map {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ConfigError(f"key map {path}: a JSON object of openpi_key: spec_key strings")
        return {str(k): v for k, v in data.items()}
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, target = line.partition("=")
        if not sep or not key.strip() or not target.strip():
            raise ConfigError(f"key map {path} line {n}: expected openpi_key=spec_key")
        out[key.strip()] = target.strip()
    return out


def metadata_frame(spec: PolicySpec, user: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a client's ``get_server_metadata()`` returns: the spec's facts, then the user's JSON.

    openpi servers send their policy's metadata (often ``{}``); clients read
    ``action_horizon``-like facts from it when present. The spec gives them
    here; ``--metadata`` entries are added on top and win on a clash.
    """
    out: dict[str, Any] = {
        "served_by": "arena-eval gateway openpi",
        "pool_policy": spec.name,
        "action_horizon": spec.chunk_length,
        "action_dim": spec.action_dim,
        "action_dtype": spec.action_dtype,
        "needs_instruction": spec.needs_instruction,
        "observations": None
        if spec.observations is None
        else {k: {"dtype": f.dtype, "shape": list(f.shape)} for k, f in spec.observations.items()},
    }
    if spec.policy is not None:
        out["policy_version"] = spec.policy.version
        out["policy_digest"] = spec.policy.digest
    out.update(dict(user or {}))
    return out
