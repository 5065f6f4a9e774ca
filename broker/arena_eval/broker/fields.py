"""Reading fields that anyone with redis-cli could have written.

The read side (``status``, ``results``, ``jobs``) must never crash on a field
it did not write: one hand-typed ``HSET`` or a newer version's record should
cost one warning line naming the key and the field, not the whole listing.
Each helper here returns the parsed value, or None after appending such a
warning to the caller's ``warnings`` list.
"""

from __future__ import annotations

import math
from typing import Any

#: Longest piece of a bad value quoted in a warning.
SHOWN_CHARS = 60


def as_text(raw: Any, none: str = "") -> str:
    """A Redis reply item as str, ``none`` for None; bytes that are not UTF-8 are replaced.

    The one decoding helper of the project: anything read from Redis may have been
    written by hand, so decoding never raises; a replaced id simply matches no key.
    """
    if raw is None:
        return none
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def shown(raw: Any) -> str:
    """A bad value quoted for a warning, cut to ``SHOWN_CHARS``."""
    value = as_text(raw)
    return repr(value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "...")


def warn_field(warnings: list[str], key: str, field: Any, raw: Any, what: str) -> None:
    """Append ``<key> field '<field>' = '<value>': <what>``."""
    warnings.append(f"{key} field {as_text(field)!r} = {shown(raw)}: {what}")


def number(
    warnings: list[str],
    key: str,
    field: Any,
    raw: Any,
    *,
    counter: bool = False,
) -> float | None:
    """``raw`` as a finite float (``counter``: a non-negative integer), else warn and None."""
    try:
        value = float(as_text(raw))
    except ValueError:
        warn_field(warnings, key, field, raw, "not a number; treated as missing")
        return None
    if not math.isfinite(value):
        warn_field(warnings, key, field, raw, "not a finite number; treated as missing")
        return None
    if counter and (value < 0 or value != int(value)):
        warn_field(warnings, key, field, raw, "not a non-negative integer; treated as missing")
        return None
    return value
