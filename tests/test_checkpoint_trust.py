"""A state-dict checkpoint cannot make the worker import or call what it likes.

Why: ``torch.load(weights_only=True)`` keeps pickled code out, but the
arena-eval state dict *names* the class to build and its constructor
arguments. Without an allowlist, a file naming ``os:system`` with
``model_kwargs={"command": ...}`` runs a shell command when served. These
tests serve such files through the real ``torch`` policy and check that nothing
runs, nothing untrusted is imported, and trusted or operator-allowed models
still load.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
import torch

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.spec import FieldSpec, PolicySpec
from arena_eval.policy_worker.builtins.torch_checkpoint import (
    STATE_DICT_FORMAT,
    TRUSTED_MODELS,
    parse_allowed_models,
)
from arena_eval.policy_worker.policy import Batch
from arena_eval.policy_worker.registry import load_policy
from arena_eval.policy_worker.training.export import export_policy
from arena_eval.policy_worker.training.models import BCPolicyNet
from arena_eval.policy_worker.training.trainer import EpochStats, TrainResult

SPEC = PolicySpec(
    name="trust-probe",
    action_shape=(1, 2),
    observations={"state": FieldSpec("float32", (2,))},
)
PROBE_MODULE = "arena_trust_probe"
PROBE_SOURCE = """
import pathlib
import torch

pathlib.Path(__file__).with_name("imported.marker").write_text("imported")


class Net(torch.nn.Module):
    def __init__(self, n: int = 2) -> None:
        super().__init__()
        self.n = n
        self.lin = torch.nn.Linear(n, n)

    def forward(self, obs):
        return self.lin(obs["state"]).reshape(-1, 1, self.n)
"""


def _crafted(path: Path, model: str, kwargs: dict[str, object], state: dict[str, object]) -> Path:
    """A file as an attacker (or a careless exporter) would write it, with torch.save."""
    ckpt = {
        "format": STATE_DICT_FORMAT,
        "model": model,
        "model_kwargs": kwargs,
        "state_dict": state,
        "spec": SPEC.to_dict(),
    }
    torch.save(ckpt, str(path))
    return path


def test_checkpoint_naming_os_system_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {shlex.quote(str(marker))}"
    evil = _crafted(tmp_path / "evil.pt", "os:system", {"command": command}, {})

    with pytest.raises(ConfigError, match=r"'os:system'.*allow_model=") as refused:
        load_policy("torch", {"path": str(evil)})
    assert "BCPolicyNet" in str(refused.value)  # says what is trusted
    assert not marker.exists()

    # Even an operator who allows it by mistake gets no call: it is not an nn.Module class.
    with pytest.raises(
        ConfigError, match=r"not a torch\.nn\.Module subclass \(it is builtin_function.*refused"
    ):
        load_policy("torch", {"path": str(evil), "allow_model": "os:system"})
    assert not marker.exists()

    # A malformed name from the file is not echoed back as a command to run.
    odd = _crafted(tmp_path / "odd.pt", "os:system; echo hi", {"command": command}, {})
    with pytest.raises(ConfigError, match=r"not a 'package\.module:Class' name") as malformed:
        load_policy("torch", {"path": str(odd)})
    assert "allow_model" not in str(malformed.value)
    assert not marker.exists()

    # A class that is not a Module is refused before it is built, too.
    dict_model = _crafted(tmp_path / "dict.pt", "collections:OrderedDict", {}, {})
    with pytest.raises(
        ConfigError, match=r"not a torch\.nn\.Module subclass \(it is class OrderedDict\)"
    ):
        load_policy("torch", {"path": str(dict_model), "allow_model": "collections:OrderedDict"})


def test_untrusted_module_is_not_even_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / f"{PROBE_MODULE}.py").write_text(PROBE_SOURCE, encoding="utf-8")
    imported = tmp_path / "imported.marker"
    monkeypatch.syspath_prepend(str(tmp_path))
    state = {"lin.weight": torch.eye(2), "lin.bias": torch.tensor([0.5, -0.5])}
    path = _crafted(tmp_path / "probe.pt", f"{PROBE_MODULE}:Net", {"n": 2}, state)
    try:
        with pytest.raises(ConfigError, match=rf"allow_model={PROBE_MODULE}:Net"):
            load_policy("torch", {"path": str(path)})
        assert not imported.exists() and PROBE_MODULE not in sys.modules

        # The operator names the class: it loads and serves.
        policy = load_policy("torch", {"path": str(path), "allow_model": f"{PROBE_MODULE}:Net"})
        assert imported.exists()
        obs = np.array([[1.0, 2.0]], dtype=np.float32)
        np.testing.assert_allclose(policy.infer(Batch.of({"state": obs})), [[[1.5, 1.5]]])
        policy.close()
    finally:
        sys.modules.pop(PROBE_MODULE, None)


def test_own_bc_state_dict_loads_without_allowing_anything(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs: dict[str, object] = {
        "state_keys": ["state"],
        "state_dim": 2,
        "action_dim": 2,
        "chunk": 1,
        "hidden": 8,
        "layers": 1,
    }
    net = BCPolicyNet(["state"], 2, 2, 1, hidden=8, layers=1).eval()
    result = TrainResult(model=net, spec=SPEC, curve=[EpochStats(1, 0.5, 0.1)], model_kwargs=kwargs)
    out = export_policy(tmp_path / "bc.pt", result)
    assert torch.load(str(out), weights_only=True)["model"] in TRUSTED_MODELS
    policy = load_policy("torch", {"path": str(out)})
    obs = np.array([[0.25, -1.0]], dtype=np.float32)
    with torch.no_grad():
        expected = net({"state": torch.tensor(obs)}).numpy()
    np.testing.assert_allclose(policy.infer(Batch.of({"state": obs})), expected, rtol=1e-6)
    policy.close()


def test_allow_model_names_are_checked() -> None:
    assert parse_allowed_models(" a.b:C , d:E.F ,") == frozenset({"a.b:C", "d:E.F"})
    assert parse_allowed_models(None) == frozenset()
    with pytest.raises(ConfigError, match=r"allow_model: 'a\.b' is not a 'package\.module:Class'"):
        parse_allowed_models("a.b")
    with pytest.raises(ConfigError, match="allow_model"):
        load_policy("torch", {"path": "unused.pt", "allow_model": "x:y;rm -rf"})
