"""BatchNorm folding and export: the plain CaffeNet computes what the trunk does in eval mode."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tiny_config import tiny_overrides
from torch import nn

from permrl.config import load_config
from permrl.export import (
    LAYERS,
    ExportError,
    export_trunk,
    fold_batchnorm,
    fold_conv_bn,
    load_folded,
)
from permrl.models.trunk import CaffeNetBN, ConvBN
from permrl.train import train

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

TINY = tiny_overrides(
    "model.dropout=0.0", "spatial.permutations=4", "train.val_size=8", "train.steps=2",
    "train.log_every=1", "cycle.groups=10"
)


def randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, as a trained network would have."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)


def trunk_and_input(width, size, stride, seed=0):
    torch.manual_seed(seed)
    trunk = CaffeNetBN(width=width, conv1_stride=2)
    randomise_bn(trunk, seed)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    return trunk.eval(), x


@pytest.mark.parametrize("size,stride", [(64, 2), (227, 4)], ids=["cpu", "paper-geometry"])
def test_folded_equals_trunk(size, stride):
    trunk, x = trunk_and_input(0.25, size, stride)
    net = fold_batchnorm(trunk, stride)
    with torch.no_grad():
        expected, got = trunk(x, "pool5", stride), net(x)
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.1  # not a degenerate all-zero comparison
    assert (got - expected).abs().max() <= 1e-4
    # Intermediate layers picked by name agree too.
    with torch.no_grad():
        assert (net[:LAYERS.index("relu3") + 1](x) - trunk(x, "conv3", stride)).abs().max() <= 1e-4


def test_conv1_stride_defaults_to_the_trunks():
    trunk = CaffeNetBN(width=0.25, conv1_stride=2)
    assert fold_batchnorm(trunk).conv1.stride == (2, 2)
    assert fold_batchnorm(trunk, 4).conv1.stride == (4, 4)


def test_hand_computed_fold():
    block = ConvBN(1, 1, kernel=1, stride=1, padding=0)
    with torch.no_grad():
        block.conv.weight.fill_(2.0)
        block.bn.running_mean.fill_(1.0)
        block.bn.running_var.fill_(4.0 - block.bn.eps)  # sqrt(var + eps) = 2
        block.bn.weight.fill_(3.0)
        block.bn.bias.fill_(0.5)
    conv = fold_conv_bn(block)
    # w' = 2 * 3 / 2 = 3; b' = 0.5 - 1 * 3 / 2 = -1
    assert conv.weight.item() == pytest.approx(3.0)
    assert conv.bias.item() == pytest.approx(-1.0)
    block.eval()
    x = torch.tensor([[[[5.0]]]])
    with torch.no_grad():
        assert conv(x).item() == pytest.approx(14.0)  # 3 * 5 - 1
        assert block(x).item() == pytest.approx(14.0)  # relu(3 * (2 * 5 - 1) / 2 + 0.5)


def test_no_batchnorm_and_conv_biases():
    net = fold_batchnorm(CaffeNetBN(width=0.25))
    assert tuple(name for name, _ in net.named_children()) == LAYERS
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(c.bias is not None for c in convs)
    assert not net.training


def test_state_dict_round_trip(tmp_path):
    trunk, x = trunk_and_input(0.25, 64, 2)
    net = fold_batchnorm(trunk, 2)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    fresh = fold_batchnorm(CaffeNetBN(width=0.25), 2)
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


def test_export_state_dict_and_torchscript_random_init(tmp_path):
    result = export_trunk(None, tmp_path / "net.pt", "state-dict", random_init=True)
    assert result["input_size"] == 64 and result["conv1_stride"] == 2
    assert result["max_abs_diff"] <= 1e-4 and result["parameters"] > 0
    saved = torch.load(tmp_path / "net.pt", weights_only=True)
    assert saved["architecture"] == "caffenet" and saved["layers"] == list(LAYERS)
    assert saved["width"] == 0.25 and saved["input_size"] == 64 and saved["conv1_stride"] == 2
    net = load_folded(tmp_path / "net.pt")
    assert sum(p.numel() for p in net.parameters()) == result["parameters"]

    result = export_trunk(None, tmp_path / "net.ts", "torchscript", random_init=True)
    assert result["checks"] == ["folded", "reloaded"]
    scripted = torch.jit.load(str(tmp_path / "net.ts"))
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert (scripted(x) - net(x)).abs().max() <= 1e-5
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    train(load_config(overrides=TINY), run_dir, progress=False)
    return run_dir / "checkpoint.pt"


def test_export_real_checkpoint(tiny_checkpoint, tmp_path):
    from permrl.evaluate.run import load_trunk

    trunk, cfg, _ = load_trunk(tiny_checkpoint)
    trunk.eval()
    x = torch.randn(2, 3, cfg.eval.input_size, cfg.eval.input_size)
    with torch.no_grad():
        expected = trunk(x, "pool5", cfg.eval.conv1_stride)
    for fmt, name in [("state-dict", "net.pt"), ("torchscript", "net.ts")]:
        result = export_trunk(tiny_checkpoint, tmp_path / name, fmt)
        assert result["format"] == fmt and result["max_abs_diff"] <= 1e-4
        assert result["input_size"] == cfg.eval.input_size
        loaded = load_folded(tmp_path / name) if fmt == "state-dict" else torch.jit.load(
            str(tmp_path / name))
        with torch.no_grad():
            assert (loaded(x) - expected).abs().max() <= 1e-4


def test_user_errors(tmp_path):
    with pytest.raises(ExportError, match="unknown export format"):
        export_trunk(None, tmp_path / "x", "caffe", random_init=True)
    with pytest.raises(ExportError, match="does not exist"):
        export_trunk(tmp_path / "missing.pt", tmp_path / "x", "state-dict")
    with pytest.raises(ExportError, match="directory"):
        export_trunk(None, tmp_path, "state-dict", random_init=True)


HAS_ONNX = importlib.util.find_spec("onnx") is not None


@pytest.mark.skipif(HAS_ONNX, reason="onnx is installed; the missing-package error cannot occur")
def test_onnx_without_package_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="pip install onnx"):
        export_trunk(None, tmp_path / "net.onnx", "onnx", random_init=True)
    assert not (tmp_path / "net.onnx").exists()


@pytest.mark.skipif(not HAS_ONNX, reason="ONNX export needs the 'onnx' package (not installed)")
def test_onnx_export(tmp_path):
    result = export_trunk(None, tmp_path / "net.onnx", "onnx", random_init=True)
    assert (tmp_path / "net.onnx").stat().st_size > 0
    assert result["max_abs_diff"] <= 1e-4
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed: exported graph written but not run")
    assert "onnxruntime" in result["checks"]
