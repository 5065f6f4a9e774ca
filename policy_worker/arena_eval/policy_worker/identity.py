"""A serving policy's identity: what makes two workers the same model.

Why: a pool's workers must be interchangeable, and shapes alone cannot tell a
door-open expert from a door-close one, or one checkpoint from another of the
same architecture. The worker stamps its spec with a ``PolicyIdentity`` (the
policy's class, spec name and version, and the arguments that shape its
answers), and ``pool.register`` refuses a worker whose identity differs from
the live pool's (``PolicySpec.incompatibility``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from arena_eval.broker.spec import PolicyIdentity, PolicySpec
from arena_eval.policy_worker.policy import Policy

__all__ = ["RUNTIME_ONLY_ARGS", "identify", "policy_identity"]

#: Arguments that never change a policy's answers; left out of the default identity.
RUNTIME_ONLY_ARGS = frozenset({"device", "threads", "warmup", "copy_inputs"})


def policy_identity(policy: Policy, args: Mapping[str, Any] | None = None) -> PolicyIdentity:
    """The identity of ``policy``: its own ``identity_params()``, else the arguments it got."""
    spec = policy.spec()
    declared = policy.identity_params()
    if declared is not None:
        params = {str(k): str(v) for k, v in declared.items()}
    else:
        params = {str(k): str(v) for k, v in (args or {}).items() if k not in RUNTIME_ONLY_ARGS}
    cls = type(policy)
    return PolicyIdentity(
        kind=f"{cls.__module__}:{cls.__qualname__}",
        name=spec.name,
        version=spec.version,
        params=params,
    )


def identify(policy: Policy, args: Mapping[str, Any] | None = None) -> PolicySpec:
    """``policy.spec()`` with its identity filled in (a policy may set its own)."""
    spec = policy.spec()
    if spec.policy is not None:
        return spec
    return dataclasses.replace(spec, policy=policy_identity(policy, args))
