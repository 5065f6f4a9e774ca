"""Turn ``--policy NAME --policy-arg k=v`` into a live ``Policy``.

Why a registry and not a hard-coded ``if name == ...``: people evaluate their
own models, and they should not have to fork arena-eval to do it. A policy is
found, in this order, by

1. an import path ``package.module:ClassName`` (anything importable; the
   attribute may be a class or a factory function returning a ``Policy``),
2. a name registered under the ``arena_eval.policies`` entry-point group by
   any installed distribution (third-party packages declare
   ``[project.entry-points."arena_eval.policies"] my-policy = "pkg.mod:Cls"``),
3. the built-in map below -- a fallback for when the package metadata is stale
   (e.g. an old editable install), since the built-ins are registered as
   entry points too.

Policy arguments are passed as keyword arguments, as strings when they come
from the CLI; each policy parses its own types. Nothing heavy (torch,
Meta-World) is imported here: only the chosen policy's module is imported, and
only when it is loaded.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

from arena_eval.broker.errors import ArenaEvalError, ConfigError
from arena_eval.policy_worker.policy import Policy

__all__ = [
    "BUILTIN_POLICIES",
    "ENTRY_POINT_GROUP",
    "UnknownPolicy",
    "available_policies",
    "import_object",
    "load_policy",
    "parse_policy_args",
    "resolve_factory",
]

ENTRY_POINT_GROUP = "arena_eval.policies"
_OWN_DIST = "arena-eval"

#: Built-in policies: name -> ``module:attr``. Mirrored in pyproject's entry-point table.
BUILTIN_POLICIES: Mapping[str, str] = {
    "zero": "arena_eval.policy_worker.builtins.simple:ZeroPolicy",
    "random": "arena_eval.policy_worker.builtins.simple:RandomPolicy",
    "metaworld-expert": "arena_eval.policy_worker.builtins.metaworld_expert:MetaWorldExpertPolicy",
    "torch": "arena_eval.policy_worker.builtins.torch_policy:TorchPolicy",
    "pusht-heuristic": "arena_eval.policy_worker.builtins.pusht_heuristic:PushTHeuristicPolicy",
}

_SYNTAXES = (
    "a registered name (see the list), an import path 'package.module:ClassName', "
    f"or a name your own package registers under the {ENTRY_POINT_GROUP!r} entry-point group"
)


class UnknownPolicy(ConfigError):
    """No built-in, entry point or import path matches the requested policy."""


# -- argument parsing ------------------------------------------------------------------
def parse_policy_args(items: Sequence[str]) -> dict[str, str]:
    """Parse CLI ``--policy-arg`` items ``'key=value'`` into a dict.

    The value may itself contain ``=`` (only the first one splits). Keys must
    be Python identifiers because they become keyword arguments; a key given
    twice is an error rather than a silent override.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"malformed policy argument {item!r}: expected 'key=value', "
                "e.g. --policy-arg action_shape=16x36"
            )
        if not key.isidentifier():
            raise ConfigError(
                f"malformed policy argument {item!r}: the key {key!r} must be a Python "
                "identifier (letters, digits, '_'), e.g. action_shape=16x36"
            )
        if key in out:
            raise ConfigError(f"policy argument {key!r} given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


# -- lookup ----------------------------------------------------------------------------
def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?"
    name = dist.metadata["Name"] if dist.metadata is not None else None
    return f"{name or '?'} {dist.version}"


def _is_own(ep: metadata.EntryPoint) -> bool:
    dist = getattr(ep, "dist", None)
    if dist is None or dist.metadata is None:
        return False
    name = str(dist.metadata["Name"] or "")
    return name.replace("_", "-").lower() == _OWN_DIST


def available_policies() -> dict[str, str]:
    """All loadable names -> where they come from (``module:attr [source]``), for help output."""
    out = {name: f"{target} [built-in]" for name, target in BUILTIN_POLICIES.items()}
    for ep in _entry_points():
        if _is_own(ep) and ep.name in BUILTIN_POLICIES:
            continue  # the same thing, already listed as built-in
        source = f"{ep.value} [entry point, {_dist_name(ep)}]"
        if ep.name in out and not out[ep.name].startswith(ep.value + " "):
            source = f"{out[ep.name]}; {source} (ambiguous)"
        out[ep.name] = source
    return dict(sorted(out.items()))


def _resolve_name(name: str) -> tuple[str, Callable[[], object]]:
    """Return (description, loader) for a registered name, or raise UnknownPolicy."""
    matches = [ep for ep in _entry_points() if ep.name == name]
    if name in BUILTIN_POLICIES:
        own = [ep for ep in matches if _is_own(ep)]
        if own:
            ep = own[0]
            return f"{name!r} ({ep.value}, entry point)", lambda: _load_entry_point(ep)
        target = BUILTIN_POLICIES[name]
        return f"{name!r} ({target}, built-in)", lambda: import_object(target)
    distinct = {ep.value: ep for ep in matches}
    if len(distinct) > 1:
        listing = "; ".join(f"{ep.value} from {_dist_name(ep)}" for ep in distinct.values())
        raise ConfigError(
            f"policy name {name!r} is registered by more than one package ({listing}); "
            "load one of them by its import path 'package.module:ClassName'"
        )
    if distinct:
        ep = next(iter(distinct.values()))
        return f"{name!r} ({ep.value}, entry point)", lambda: _load_entry_point(ep)
    raise _unknown(name)


def _unknown(name: str) -> UnknownPolicy:
    names = sorted(available_policies())
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownPolicy(
        f"unknown policy {name!r}.{hint} Available: {', '.join(names)}. "
        f"A policy is given as {_SYNTAXES}."
    )


def _load_entry_point(ep: metadata.EntryPoint) -> object:
    try:
        return ep.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"policy {ep.name!r} is registered by {_dist_name(ep)} as {ep.value!r}, but loading "
            f"it failed: {type(exc).__name__}: {exc}"
        ) from exc


def import_object(target: str) -> object:
    """Import ``'package.module:Attr'`` (``Attr`` may be dotted); errors say what failed."""
    module_name, sep, attr_path = target.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"malformed import path {target!r}: expected 'package.module:ClassName'")
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(
                f"cannot import {target!r}: no module named {missing!r} (is the package "
                "installed in this environment, or its folder on PYTHONPATH?)"
            ) from exc
        raise ConfigError(
            f"cannot import {target!r}: module {module_name!r} needs {missing!r}, which is not "
            f"installed ({exc})"
        ) from exc
    except ArenaEvalError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"cannot import {target!r}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(
                f"cannot import {target!r}: {module_name!r} has no attribute {attr_path!r}"
            ) from None
    return obj


# -- construction ----------------------------------------------------------------------
def _describe_params(sig: inspect.Signature) -> str:
    parts = []
    for p in sig.parameters.values():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            parts.append(f"{p.name} (required)")
        else:
            parts.append(f"{p.name}={p.default!r}")
    return ", ".join(parts) or "none"


def _bind_args(what: str, factory: Callable[..., object], args: Mapping[str, Any]) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins/extension types: let the call decide
        return
    try:
        sig.bind(**args)
    except TypeError as exc:
        params = sig.parameters
        unknown = [k for k in args if k not in params]
        missing = [
            p.name
            for p in params.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            and p.name not in args
        ]
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if unknown and not var_kw:
            reason = f"unknown argument(s) {', '.join(repr(k) for k in unknown)}"
        elif missing:
            reason = f"missing required argument(s) {', '.join(repr(k) for k in missing)}"
        else:
            reason = str(exc)
        raise ConfigError(
            f"policy {what}: {reason}. Accepted arguments: {_describe_params(sig)} "
            "(give them as --policy-arg key=value)"
        ) from None


def load_policy(name_or_path: str, args: Mapping[str, str] | None = None) -> Policy:
    """Build a policy from a registered name or a ``module:Class`` path, with keyword ``args``.

    Raises ``UnknownPolicy`` when nothing matches the name and ``ConfigError``
    for import failures, bad or missing arguments, and factories that do not
    return a ``Policy``. Other exceptions from the policy's constructor (e.g.
    out of device memory) propagate unchanged.
    """
    kwargs = dict(args or {})
    for key in kwargs:
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"policy argument name {key!r} is not a Python identifier")
    what, factory_obj = resolve_factory(name_or_path)
    _bind_args(what, factory_obj, kwargs)
    policy = factory_obj(**kwargs)
    if not isinstance(policy, Policy):
        raise ConfigError(
            f"policy {what} returned a {type(policy).__name__}, expected an instance of "
            "arena_eval.policy_worker.policy.Policy"
        )
    return policy


def resolve_factory(name_or_path: str) -> tuple[str, Callable[..., object]]:
    """``(description, class or factory)`` for a name or import path, without calling it."""
    name = name_or_path.strip()
    if not name:
        raise UnknownPolicy(f"no policy given. A policy is given as {_SYNTAXES}.")
    if ":" in name:
        what = repr(name)
        factory_obj = import_object(name)
    else:
        what, loader = _resolve_name(name)
        factory_obj = loader()

    if not callable(factory_obj):
        raise ConfigError(
            f"policy {what} is a {type(factory_obj).__name__}, not a Policy class or factory"
        )
    if inspect.isclass(factory_obj) and not issubclass(factory_obj, Policy):
        raise ConfigError(
            f"policy {what} is the class {factory_obj.__qualname__}, which does not subclass "
            "arena_eval.policy_worker.policy.Policy"
        )
    return what, factory_obj
