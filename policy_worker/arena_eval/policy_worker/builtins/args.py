"""Parsers for policy arguments, shared by the built-ins and usable by third-party policies.

Policy arguments arrive as strings from ``--policy-arg k=v`` but may also be
typed values when a policy is constructed from Python. Each parser accepts
both and raises ``ConfigError`` that names the argument and shows the expected
form, so a typo on the command line produces one readable line instead of a
traceback from deep inside numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.spec import FieldSpec

__all__ = [
    "parse_action_shape",
    "parse_bool",
    "parse_dtype",
    "parse_float",
    "parse_int",
    "parse_obs_spec",
    "parse_shape",
]

ShapeArg = str | Sequence[int]
ObsArg = str | Mapping[str, FieldSpec] | None

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def parse_shape(arg: str, value: ShapeArg, *, allow_scalar: bool = False) -> tuple[int, ...]:
    """``'512x512x3'`` (or a sequence of ints) -> ``(512, 512, 3)``; every dim >= 1.

    With ``allow_scalar``, ``''`` or ``'()'`` means a per-row scalar, shape ``()``.
    """
    expected = "dimensions joined by 'x', e.g. '512x512x3'"
    if isinstance(value, str):
        text = value.strip()
        if allow_scalar and text in ("", "()"):
            return ()
        try:
            dims = tuple(int(part) for part in text.lower().split("x"))
        except ValueError:
            raise ConfigError(f"{arg}: bad shape {value!r}; expected {expected}") from None
    else:
        try:
            dims = tuple(int(d) for d in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{arg}: bad shape {value!r}; expected {expected}") from None
        if not dims and allow_scalar:
            return ()
    if not dims or min(dims) < 1:
        raise ConfigError(f"{arg}: bad shape {value!r}; expected {expected}, each dim >= 1")
    return dims


def parse_action_shape(value: ShapeArg, arg: str = "action_shape") -> tuple[int, int]:
    """``'16x36'`` -> ``(16, 36)``: chunk length H by action dim A."""
    try:
        dims = parse_shape(arg, value)
    except ConfigError:
        dims = ()
    if len(dims) != 2:
        raise ConfigError(
            f"{arg}: bad action shape {value!r}; expected 'HxA' (chunk length x action dim, "
            "both >= 1), e.g. '16x36'"
        )
    return dims[0], dims[1]


def parse_dtype(value: str | np.dtype[np.generic] | type, arg: str = "action_dtype") -> str:
    """A numeric numpy dtype name, e.g. ``'float32'`` (accepts numpy aliases such as ``'f4'``)."""
    try:
        dt = np.dtype(value.strip() if isinstance(value, str) else value)
    except TypeError:
        raise ConfigError(
            f"{arg}: unknown dtype {value!r}; expected a numpy dtype name such as 'float32'"
        ) from None
    if dt.kind not in "biuf":
        raise ConfigError(
            f"{arg}: dtype {value!r} is not a real numeric type; expected e.g. 'float32', "
            "'float64', 'int32', 'uint8'"
        )
    return str(dt.name)


def parse_obs_spec(value: ObsArg, arg: str = "obs") -> dict[str, FieldSpec] | None:
    """``'rgb:uint8:512x512x3,joint_pos:float32:54'`` -> ``{key: FieldSpec}``.

    Items are ``key:dtype:shape`` separated by commas; the shape excludes the
    batch dimension (``''`` or ``'()'`` for a per-row scalar). ``None`` or an
    empty string means "accept any observation dict".
    """
    if value is None:
        return None
    if not isinstance(value, str):
        if not all(isinstance(v, FieldSpec) for v in value.values()):
            raise ConfigError(f"{arg}: expected a mapping of key -> FieldSpec")
        return {str(k): v for k, v in value.items()}
    if not value.strip():
        return None
    expected = "comma-separated 'key:dtype:shape' items, e.g. 'rgb:uint8:512x512x3,state:float32:7'"
    out: dict[str, FieldSpec] = {}
    for item in value.split(","):
        item = item.strip()
        parts = item.rsplit(":", 2)
        if len(parts) != 3 or not parts[0].strip():
            raise ConfigError(f"{arg}: malformed item {item!r}; expected {expected}")
        key = parts[0].strip()
        if key in out:
            raise ConfigError(f"{arg}: observation key {key!r} appears twice")
        dtype = parse_dtype(parts[1], arg=f"{arg} ({key})")
        shape = parse_shape(f"{arg} ({key})", parts[2], allow_scalar=True)
        out[key] = FieldSpec(dtype, shape)
    return out


def parse_int(value: str | int, arg: str, *, minimum: int | None = None) -> int:
    """An integer argument, optionally bounded below."""
    if isinstance(value, bool):
        raise ConfigError(f"{arg}: expected an integer, got {value!r}")
    try:
        out = int(value.strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{arg}: expected an integer, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise ConfigError(f"{arg}: must be >= {minimum}, got {out}")
    return out


def parse_float(value: str | float, arg: str) -> float:
    """A finite float argument."""
    try:
        out = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{arg}: expected a number, got {value!r}") from None
    if not np.isfinite(out):
        raise ConfigError(f"{arg}: expected a finite number, got {value!r}")
    return out


def parse_bool(value: str | bool, arg: str) -> bool:
    """``1/0``, ``true/false``, ``yes/no``, ``on/off`` (case-insensitive)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{arg}: expected a boolean (1/0, true/false, yes/no), got {value!r}")
