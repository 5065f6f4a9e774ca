"""The ``torch`` policy with a real (briefly trained) model in all three checkpoint formats.

The model class lives in this module so that the state-dict checkpoint can
name it (``tests.test_torch_policy:TinyPolicyNet``) the way a real checkpoint
names a class from an installed package.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
import torch

from arena_eval.broker.errors import ConfigError
from arena_eval.broker.spec import FieldSpec, PolicySpec
from arena_eval.policy_worker.builtins.torch_checkpoint import (
    STATE_DICT_FORMAT,
    detect_format,
    save_checkpoint,
    save_exported,
    save_state_dict_checkpoint,
    save_torchscript,
    write_sidecar_spec,
)
from arena_eval.policy_worker.builtins.torch_policy import TorchPolicy, torch_device_summary
from arena_eval.policy_worker.policy import Batch
from arena_eval.policy_worker.registry import load_policy

H, A, STATE = 4, 3, 6
FORMATS = ("torchscript", "export", "state_dict")
SUFFIX = {"torchscript": ".ts", "export": ".pt2", "state_dict": ".pt"}
#: The state dicts here name this module's classes, which a worker imports only when allowed.
ALLOW = {"allow_model": "tests.test_torch_policy:TinyPolicyNet,tests.test_torch_policy:InPlaceNet"}
SPEC = PolicySpec(
    name="tiny-mlp",
    version="7",
    action_shape=(H, A),
    observations={"state": FieldSpec("float32", (STATE,)), "image": FieldSpec("uint8", (4, 4, 3))},
)


class TinyPolicyNet(torch.nn.Module):
    """state (B, 6) float32 + image (B, 4, 4, 3) uint8 -> actions (B, H, A)."""

    def __init__(self, hidden: int = 16, chunk: int = H, action_dim: int = A) -> None:
        super().__init__()
        self.chunk = chunk
        self.action_dim = action_dim
        self.net = torch.nn.Sequential(
            torch.nn.Linear(STATE + 3, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, chunk * action_dim),
        )

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        image = obs["image"].to(torch.float32) / 255.0
        colour = image.mean(dim=(1, 2))  # (B, 3)
        x = torch.cat([obs["state"], colour], dim=1)
        out: torch.Tensor = self.net(x)
        return out.reshape(x.shape[0], self.chunk, self.action_dim)


def _batch(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "state": rng.standard_normal((rows, STATE)).astype(np.float32),
        "image": rng.integers(0, 256, size=(rows, 4, 4, 3), dtype=np.uint8),
    }


def _readonly(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: np.frombuffer(v.tobytes(), dtype=v.dtype).reshape(v.shape) for k, v in batch.items()}
    assert not any(v.flags.writeable for v in out.values())
    return out


def _direct(model: torch.nn.Module, batch: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model({k: torch.tensor(v) for k, v in batch.items()})
    return np.asarray(out.numpy())


@pytest.fixture(scope="module")
def model() -> TinyPolicyNet:
    torch.manual_seed(0)
    net = TinyPolicyNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    data = _batch(32, seed=1)
    obs = {k: torch.tensor(v) for k, v in data.items()}
    target = torch.tanh(torch.tensor(data["state"][:, :A])).unsqueeze(1).expand(-1, H, -1)
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(net(obs), target)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def checkpoints(model: TinyPolicyNet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "torchscript": save_torchscript(root / "m.ts", model, SPEC),
        "export": save_exported(root / "m.pt2", model, SPEC),
        "state_dict": save_state_dict_checkpoint(
            root / "m.pt", model, SPEC, model_kwargs={"hidden": 16}
        ),
    }


@pytest.fixture
def torch_warn_always() -> Iterator[None]:
    """Make torch's warn-once warnings fire every time, so "no warning" is really tested."""
    previous = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        yield
    finally:
        torch.set_warn_always(previous)


@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_round_trip(fmt: str, model: TinyPolicyNet, checkpoints: dict[str, Path]) -> None:
    path = checkpoints[fmt]
    assert detect_format(path) == fmt
    policy = load_policy("torch", {"path": str(path), **ALLOW})
    assert isinstance(policy, TorchPolicy)
    assert policy.checkpoint_format == fmt
    assert policy.device == torch.device("cpu")  # device=auto on a machine without CUDA
    assert policy.spec() == SPEC
    for rows in (1, 5):
        batch = _batch(rows, seed=rows)
        out = policy.infer(Batch.of(batch))
        assert out.shape == (rows, H, A)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, _direct(model, batch), rtol=1e-5, atol=1e-6)
    policy.close()


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("fmt", FORMATS)
def test_readonly_inputs_without_warnings(
    fmt: str, model: TinyPolicyNet, checkpoints: dict[str, Path], torch_warn_always: None
) -> None:
    policy = load_policy("torch", {"path": str(checkpoints[fmt]), "device": "auto", **ALLOW})
    batch = _batch(3, seed=11)
    frozen = _readonly(batch)
    out = policy.infer(Batch.of(frozen))
    np.testing.assert_allclose(out, _direct(model, batch), rtol=1e-5, atol=1e-6)
    # sanity: the warning we suppress is real and would have failed this test
    with pytest.raises(UserWarning, match="not writable"):
        torch.from_numpy(frozen["state"])


def test_odd_input_layouts(model: TinyPolicyNet, checkpoints: dict[str, Path]) -> None:
    policy = load_policy("torch", {"path": str(checkpoints["torchscript"])})
    batch = _batch(5, seed=9)
    odd = {
        "state": batch["state"][::-1].astype(">f4")[::-1],  # big-endian, negative strides
        "image": batch["image"][::-1][::-1],
    }
    assert odd["state"].strides[0] < 0
    np.testing.assert_allclose(
        policy.infer(Batch.of(odd)), _direct(model, batch), rtol=1e-5, atol=1e-6
    )


class InPlaceNet(TinyPolicyNet):
    """Breaks the convention: scales its input in place."""

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        obs["state"].mul_(2.0)
        return super().forward(obs)


def test_copy_inputs_protects_readonly_buffers(model: TinyPolicyNet, tmp_path: Path) -> None:
    net = InPlaceNet()
    net.load_state_dict(model.state_dict())
    path = save_state_dict_checkpoint(tmp_path / "inplace.pt", net, SPEC)
    policy = load_policy("torch", {"path": str(path), "copy_inputs": "1", **ALLOW})
    batch = _batch(2, seed=4)
    frozen = _readonly(batch)
    before = frozen["state"].copy()
    out = policy.infer(Batch.of(frozen))
    np.testing.assert_array_equal(frozen["state"], before)
    doubled = {**batch, "state": batch["state"] * 2}
    np.testing.assert_allclose(out, _direct(model, doubled), rtol=1e-5, atol=1e-6)


def test_save_checkpoint_dispatch_and_sidecar(model: TinyPolicyNet, tmp_path: Path) -> None:
    for fmt, suffix in SUFFIX.items():
        path = save_checkpoint(tmp_path / f"x{suffix}", model, SPEC)
        assert detect_format(path) == fmt
    explicit = save_checkpoint(tmp_path / "weights.bin", model, SPEC, format="torchscript")
    assert detect_format(explicit) == "torchscript"

    # A checkpoint made elsewhere without a spec: sidecar, then spec_path override.
    bare = tmp_path / "bare.ts"
    torch.jit.save(torch.jit.script(model), str(bare))
    with pytest.raises(ConfigError, match=r"carries no policy spec.*spec_path"):
        load_policy("torch", {"path": str(bare)})
    write_sidecar_spec(bare, SPEC)
    assert load_policy("torch", {"path": str(bare)}).spec() == SPEC
    other = PolicySpec.from_dict({**SPEC.to_dict(), "name": "renamed"})
    override = tmp_path / "override.json"
    override.write_text(other.to_json())
    policy = load_policy("torch", {"path": str(bare), "spec_path": str(override)})
    assert policy.spec().name == "renamed"


def test_state_dict_checkpoint_contents(checkpoints: dict[str, Path]) -> None:
    ckpt = torch.load(str(checkpoints["state_dict"]), weights_only=True)
    assert ckpt["format"] == STATE_DICT_FORMAT
    assert ckpt["model"] == "tests.test_torch_policy:TinyPolicyNet"
    assert ckpt["model_kwargs"] == {"hidden": 16}
    assert PolicySpec.from_dict(ckpt["spec"]) == SPEC


def test_autocast_and_output_dtype(model: TinyPolicyNet, tmp_path: Path) -> None:
    f64 = PolicySpec.from_dict({**SPEC.to_dict(), "action_dtype": "float64"})
    path = save_torchscript(tmp_path / "f64.ts", model, f64)
    batch = _batch(4, seed=3)
    out = load_policy("torch", {"path": str(path)}).infer(Batch.of(batch))
    assert out.dtype == np.float64  # cast to the spec's action dtype
    bf16 = load_policy("torch", {"path": str(path), "dtype": "bf16", "threads": "1"})
    approx = bf16.infer(Batch.of(batch))
    assert approx.dtype == np.float64
    np.testing.assert_allclose(approx, out, atol=0.1)


def test_bad_arguments(checkpoints: dict[str, Path]) -> None:
    path = str(checkpoints["torchscript"])
    with pytest.raises(ConfigError, match="device: expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        load_policy("torch", {"path": path, "device": "gpu"})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            load_policy("torch", {"path": path, "device": "cuda:0"})
    with pytest.raises(ConfigError, match="dtype: expected 'fp32', 'bf16' or 'fp16'"):
        load_policy("torch", {"path": path, "dtype": "int8"})
    with pytest.raises(ConfigError, match="format: expected"):
        load_policy("torch", {"path": path, "format": "onnx"})
    with pytest.raises(ConfigError, match=r"missing required argument.*'path'"):
        load_policy("torch")


def test_missing_and_malformed_checkpoints(
    model: TinyPolicyNet, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"path: checkpoint .*nope.pt' does not exist"):
        load_policy("torch", {"path": str(tmp_path / "nope.pt")})
    with pytest.raises(ConfigError, match="is not a file"):
        load_policy("torch", {"path": str(tmp_path)})

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(ConfigError, match=r"weights_only=True.*TorchScript"):
        load_policy("torch", {"path": str(garbage)})

    pickled = tmp_path / "pickled_module.pt"
    torch.save(model, str(pickled))  # a whole pickled nn.Module: never unpickled by us
    with pytest.raises(ConfigError, match="never unpickles arbitrary objects"):
        load_policy("torch", {"path": str(pickled)})

    plain = tmp_path / "plain_state_dict.pt"
    torch.save(model.state_dict(), str(plain))
    with pytest.raises(ConfigError, match=r"not an arena-eval state dict.*model"):
        load_policy("torch", {"path": str(plain)})

    def tweak(name: str, **changes: object) -> Path:
        ckpt = torch.load(str(checkpoints["state_dict"]), weights_only=True)
        ckpt.update(changes)
        out = tmp_path / name
        torch.save(ckpt, str(out))
        return out

    wrong_class = tweak("wrong_class.pt", model="tests.test_torch_policy:NoSuchNet")
    with pytest.raises(ConfigError, match="has no attribute 'NoSuchNet'"):
        load_policy(
            "torch", {"path": str(wrong_class), "allow_model": "tests.test_torch_policy:NoSuchNet"}
        )
    wrong_shape = tweak("wrong_shape.pt", model_kwargs={"hidden": 8})
    with pytest.raises(ConfigError, match="state dict does not fit"):
        load_policy("torch", {"path": str(wrong_shape), **ALLOW})
    bad_spec = tweak("bad_spec.pt", spec={"name": "x"})
    with pytest.raises(ConfigError, match="malformed policy spec"):
        load_policy("torch", {"path": str(bad_spec), **ALLOW})
    no_spec = tweak("no_spec.pt", spec=None)
    with pytest.raises(ConfigError, match="carries no policy spec"):
        load_policy("torch", {"path": str(no_spec), **ALLOW})

    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(checkpoints["export"].read_bytes()[:2000])
    with pytest.raises(ConfigError):
        load_policy("torch", {"path": str(truncated)})


def test_spec_disagreeing_with_model_fails_at_load(model: TinyPolicyNet, tmp_path: Path) -> None:
    wrong = PolicySpec.from_dict({**SPEC.to_dict(), "action_shape": [H + 1, A]})
    path = save_torchscript(tmp_path / "wrong.ts", model, wrong)
    with pytest.raises(ConfigError, match=r"disagrees with its spec.*\[1, 4, 3\].*\[1, 5, 3\]"):
        load_policy("torch", {"path": str(path)})
    policy = load_policy("torch", {"path": str(path), "warmup": "0"})  # skipped: fails per call
    with pytest.raises(Exception, match="expected"):
        policy.infer(Batch.of(_batch(2)))

    missing_key = {
        **SPEC.to_dict(),
        "observations": {"state": {"dtype": "float32", "shape": [STATE]}},
    }
    path2 = save_torchscript(tmp_path / "nokey.ts", model, PolicySpec.from_dict(missing_key))
    with pytest.raises(ConfigError, match=r"warm-up forward pass.*failed"):
        load_policy("torch", {"path": str(path2)})


def test_save_helpers_refuse_unimportable_models(model: TinyPolicyNet, tmp_path: Path) -> None:
    class Local(torch.nn.Module):
        def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
            return obs["state"]

    with pytest.raises(ConfigError, match="cannot be imported by a policy worker"):
        save_state_dict_checkpoint(tmp_path / "l.pt", Local(), SPEC)
    with pytest.raises(ConfigError, match="model_kwargs"):
        save_state_dict_checkpoint(tmp_path / "k.pt", model, SPEC, model_kwargs={"x": object()})
    spec_any = PolicySpec(name="any", action_shape=(H, A))
    with pytest.raises(ConfigError, match="example_obs"):
        save_exported(tmp_path / "a.pt2", model, spec_any)
    path = save_exported(tmp_path / "b.pt2", model, spec_any, example_obs=_batch(2))
    policy = load_policy("torch", {"path": str(path)})  # no obs spec: no warm-up
    assert policy.spec().observations is None
    assert policy.infer(Batch.of(_batch(3))).shape == (3, H, A)


def test_device_summary() -> None:
    text = torch_device_summary()
    assert text.startswith(f"torch {torch.__version__}")
    assert "CPU threads" in text
    json.dumps(text)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", FORMATS)
def test_cuda_pinned_path(fmt: str, model: TinyPolicyNet, checkpoints: dict[str, Path]) -> None:
    policy = load_policy("torch", {"path": str(checkpoints[fmt]), "device": "cuda", **ALLOW})
    assert isinstance(policy, TorchPolicy)
    assert policy.device.type == "cuda"
    staging = policy._staging
    assert staging is not None
    batch = _batch(3, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read-only inputs are copied, never wrapped: no warning
        out = policy.infer(Batch.of(_readonly(batch)))
    np.testing.assert_allclose(out, _direct(model, batch), rtol=1e-4, atol=1e-5)
    assert out.flags.writeable  # a copy, not a view of the reused pinned buffer
    buffers = {k: v.data_ptr() for k, v in staging.buffers.items()}
    assert all(v.is_pinned() for v in staging.buffers.values())
    assert set(buffers) == {"in:state", "in:image", "out"}
    out2 = policy.infer(Batch.of(_readonly(_batch(4, seed=6))))  # fits the 4-row capacity: reused
    assert {k: v.data_ptr() for k, v in staging.buffers.items()} == buffers
    assert out2.shape == (4, H, A)
    np.testing.assert_allclose(out, _direct(model, batch), rtol=1e-4, atol=1e-5)  # not clobbered
    big = _batch(9, seed=7)
    out3 = policy.infer(Batch.of(_readonly(big)))  # grows
    np.testing.assert_allclose(out3, _direct(model, big), rtol=1e-4, atol=1e-5)
    assert staging.buffers["in:state"].numel() >= 16 * STATE
    half = load_policy(
        "torch", {"path": str(checkpoints[fmt]), "device": "cuda:0", "dtype": "bf16", **ALLOW}
    )
    np.testing.assert_allclose(half.infer(Batch.of(big)), out3, atol=0.1)
    policy.close()
    half.close()
    assert "cuda:0" in torch_device_summary()
