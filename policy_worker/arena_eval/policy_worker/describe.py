"""What ``arena-eval policy describe NAME`` shows: a policy's purpose, arguments and spec.

Why: policy arguments were discoverable only by getting one wrong. This
reads them from the policy itself -- names and defaults from its
constructor's signature, type and help from its ``ARGS`` (``ArgDoc``) -- so
the documentation cannot drift from the code. The spec is shown when
building the policy is possible from the given arguments (every required one
given); building a Meta-World expert or a checkpoint is the user's choice.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from arena_eval.policy_worker.identity import identify
from arena_eval.policy_worker.policy import ArgDoc
from arena_eval.policy_worker.registry import load_policy, resolve_factory

__all__ = ["describe_policy"]


def describe_policy(name: str, args: Mapping[str, str] | None = None) -> dict[str, Any]:
    """JSON-ready description of a registered policy or ``module:Class`` path."""
    what, factory = resolve_factory(name)
    docs: Mapping[str, ArgDoc] = getattr(factory, "ARGS", {}) or {}
    arguments = _arguments(factory, docs)
    given = dict(args or {})
    missing = [a["name"] for a in arguments if a["required"] and a["name"] not in given]
    out: dict[str, Any] = {
        "policy": name,
        "source": what,
        "description": _description(factory),
        "arguments": arguments,
        "spec": None,
        "spec_note": "",
    }
    if missing:
        out["spec_note"] = (
            f"give {', '.join(f'--policy-arg {m}=...' for m in missing)} to see the spec"
        )
    else:
        policy = load_policy(name, given)
        try:
            out["spec"] = identify(policy, given).to_dict()
        finally:
            policy.close()
    return out


def _arguments(factory: Any, docs: Mapping[str, ArgDoc]) -> list[dict[str, Any]]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        params = []  # type: ignore[assignment]
    out = []
    for p in params:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        doc = docs.get(p.name)
        required = p.default is inspect.Parameter.empty
        annotation = "" if p.annotation is inspect.Parameter.empty else str(p.annotation)
        out.append(
            {
                "name": p.name,
                "type": doc.type if doc else annotation,
                "default": None if required else _plain(p.default),
                "required": required,
                "help": doc.help if doc else "",
            }
        )
    return out


def _description(factory: Any) -> str:
    doc = inspect.getdoc(factory) or ""
    return doc.strip()


def _plain(value: Any) -> Any:
    """A default as JSON can carry it (numbers, strings, bools, None); else its repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
