"""Export a trained trunk as a plain CaffeNet: BatchNorm folded into the convolutions.

The paper fine-tunes a standard CaffeNet (conv + bias, no BN) initialised from the
self-supervised weights. `fold_batchnorm` turns the CaffeNet-BN trunk into exactly that network
(eval-mode BN is an affine map per channel, so it merges into the preceding convolution), and
`export_trunk` writes it as a state dict, a TorchScript module or an ONNX graph, after checking
that its output equals the trunk's.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from permrl.errors import UserError
from permrl.files import atomic_path
from permrl.models.trunk import BLOCKS, CaffeNetBN, ConvBN, caffe_pool

FORMATS = ("state-dict", "torchscript", "onnx")
LAYERS = ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3",
          "conv4", "relu4", "conv5", "relu5", "pool5")
TOLERANCE = 1e-4
ONNX_OPSET = 17


class ExportError(UserError):
    """A user error about an export (format, checkpoint, missing package): one line."""


def fold_conv_bn(block: ConvBN, stride: int | None = None) -> nn.Conv2d:
    """One `nn.Conv2d` with bias equal to conv -> BatchNorm (eval mode) of `block`."""
    conv, bn = block.conv, block.bn
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError("cannot fold a BatchNorm without running statistics")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(var)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                       stride=block.stride if stride is None else stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                       bias=True, device=conv.weight.device)
    with torch.no_grad():
        weight = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
        folded.weight.copy_(weight.to(conv.weight.dtype))
        folded.bias.copy_((beta + (bias - mean) * scale).to(conv.weight.dtype))
    return folded


def fold_batchnorm(trunk: CaffeNetBN, conv1_stride: int | None = None) -> nn.Sequential:
    """The plain CaffeNet conv1..pool5 computing what `trunk` computes in eval mode.

    Modules are named conv1, relu1, pool1, ..., relu5, pool5 (see LAYERS); conv1 uses
    `conv1_stride` (default: the trunk's own). The result is in eval mode.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for name in BLOCKS:
        if name.startswith("pool"):
            layers[name] = caffe_pool()
            continue
        layers[name] = fold_conv_bn(getattr(trunk, name),
                                    conv1_stride if name == "conv1" else None)
        layers[f"relu{name[4:]}"] = nn.ReLU()
    assert tuple(layers) == LAYERS
    return nn.Sequential(layers).eval()


def caffenet(width: float, conv1_stride: int, in_channels: int = 3) -> nn.Sequential:
    """An (untrained) folded CaffeNet of this shape, to load an exported state dict into."""
    return fold_batchnorm(CaffeNetBN(width, conv1_stride, in_channels))


def load_folded(path: str | Path) -> nn.Sequential:
    """The network written by `export_trunk(..., fmt="state-dict")`, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"exported network {path} does not exist")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("architecture") != "caffenet":
        raise ExportError(f"{path} is not a state dict written by permrl export")
    net = caffenet(saved["width"], saved["conv1_stride"], saved.get("in_channels", 3))
    net.load_state_dict(saved["state_dict"])
    return net.eval()


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp)` into a temporary file next to `path`, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        write(str(tmp))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max())


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _export_onnx(net: nn.Sequential, x: torch.Tensor, tmp: str) -> None:
    """ONNX, opset 17, dynamic batch axis. torch >= 2.9 needs `onnx` for either exporter;
    the torch.export-based one (used when `onnxscript` is there) also needs `onnxscript`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if _available("onnxscript"):
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(net, (x,), tmp, input_names=["image"], output_names=["pool5"],
                              opset_version=ONNX_OPSET, dynamo=True, external_data=False,
                              dynamic_shapes=({0: batch},))
        else:
            torch.onnx.export(net, (x,), tmp, input_names=["image"], output_names=["pool5"],
                              opset_version=ONNX_OPSET, dynamo=False,
                              dynamic_axes={"image": {0: "batch"}, "pool5": {0: "batch"}})


def export_trunk(
    checkpoint: str | Path | None, out: str | Path, fmt: str, *, random_init: bool = False,
    preset: str = "cpu",
) -> dict[str, Any]:
    """`permrl export`: write the checkpoint's trunk as a BN-free CaffeNet (conv1..pool5).

    The network takes cfg.eval.input_size images with conv1 stride cfg.eval.conv1_stride (the
    evaluation geometry). Returns {"format", "path", "max_abs_diff", "input_size",
    "conv1_stride", "parameters", "checks"}; `max_abs_diff` is the largest difference to the
    unfolded trunk over all checks made (the folded net, and the reloaded file where possible).
    """
    from permrl.evaluate.run import load_trunk  # heavy imports only when exporting

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx" and not _available("onnx"):
        raise ExportError("ONNX export needs the 'onnx' package (pip install onnx; "
                          "add onnxruntime to check the exported graph)")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ExportError(f"checkpoint {checkpoint} does not exist")
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"output {out} is a directory; give a file name")

    trunk, cfg, _ = load_trunk(checkpoint, random_init, preset)
    trunk = trunk.cpu().eval()
    size, stride = cfg.eval.input_size, cfg.eval.conv1_stride
    net = fold_batchnorm(trunk, stride)
    in_channels = trunk.conv1.conv.in_channels
    x = torch.randn(2, in_channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trunk(x, "pool5", stride)
        diff = _max_diff(net(x), expected)
    checks = ["folded"]
    if not diff <= TOLERANCE:
        raise ExportError(f"folded network differs from the trunk by {diff:.3g} "
                          f"(tolerance {TOLERANCE:g})")

    if fmt == "state-dict":
        payload = {"state_dict": net.state_dict(), "architecture": "caffenet",
                   "width": trunk.width, "in_channels": in_channels, "input_size": size,
                   "conv1_stride": stride, "layers": list(LAYERS)}
        _write_atomic(out, lambda tmp: torch.save(payload, tmp))
        with torch.no_grad():
            diff = max(diff, _max_diff(load_folded(out)(x), expected))
        checks.append("reloaded")
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(net)
            _write_atomic(out, scripted.save)
            reloaded = torch.jit.load(str(out), map_location="cpu")
        with torch.no_grad():
            diff = max(diff, _max_diff(reloaded(x), expected))
        checks.append("reloaded")
    else:
        _write_atomic(out, lambda tmp: _export_onnx(net, x, tmp))
        if _available("onnxruntime"):
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            (y,) = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})
            diff = max(diff, _max_diff(torch.from_numpy(y), expected[:1]))
            checks.append("onnxruntime")
    if not diff <= TOLERANCE:
        out.unlink(missing_ok=True)
        raise ExportError(f"exported {fmt} network differs from the trunk by {diff:.3g} "
                          f"(tolerance {TOLERANCE:g})")
    return {"format": fmt, "path": str(out), "max_abs_diff": diff, "input_size": size,
            "conv1_stride": stride, "parameters": sum(p.numel() for p in net.parameters()),
            "checks": checks}
