"""CaffeNet-BN trunk (design §4): block shapes from the CaffeNet formulas, layer selection."""

from __future__ import annotations

import pytest
import torch

from permrl.models.trunk import BLOCKS, CaffeNetBN


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny convolutions: intra-op threads only add latency (badly so on a loaded machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# CaffeNet: (channels, kernel, padding) of the convolutions, by block name
CONVS = {
    "conv1": (96, 11, 0),
    "conv2": (256, 5, 2),
    "conv3": (384, 3, 1),
    "conv4": (384, 3, 1),
    "conv5": (256, 3, 1),
}


def conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def pool_out(n: int) -> int:
    # Caffe 3x3/2 max pooling rounds up: ceil((n - 3) / 2) + 1
    return -((3 - n) // 2) + 1


def expected_shapes(size: int, width: float, stride: int) -> dict[str, tuple[int, int, int]]:
    shapes = {}
    c, n = 3, size
    for name in BLOCKS:
        if name in CONVS:
            full, k, p = CONVS[name]
            c = max(1, round(full * width))
            n = conv_out(n, k, stride if name == "conv1" else 1, p)
        else:
            n = pool_out(n)
        shapes[name] = (c, n, n)
    return shapes


def test_formula_helpers_hand_values():
    assert conv_out(64, 11, 2, 0) == 27 and conv_out(227, 11, 4, 0) == 55
    assert conv_out(32, 11, 2, 0) == 11 and conv_out(13, 5, 1, 2) == 13
    assert [pool_out(n) for n in (55, 27, 13, 6, 5, 2)] == [27, 13, 6, 3, 2, 1]


# (preset, width, input px, conv1 stride, expected pool5)
CASES = [
    ("paper-train", 1.0, 64, 2, (256, 3, 3)),
    ("paper-eval", 1.0, 227, 4, (256, 6, 6)),
    ("cpu-train", 0.25, 32, 2, (64, 1, 1)),
    ("cpu-eval", 0.25, 64, 2, (64, 3, 3)),
]


def test_expected_shapes_hand_values():
    assert expected_shapes(64, 1.0, 2) == {
        "conv1": (96, 27, 27), "pool1": (96, 13, 13), "conv2": (256, 13, 13),
        "pool2": (256, 6, 6), "conv3": (384, 6, 6), "conv4": (384, 6, 6),
        "conv5": (256, 6, 6), "pool5": (256, 3, 3),
    }
    assert expected_shapes(227, 1.0, 4)["pool2"] == (256, 13, 13)
    assert expected_shapes(32, 0.25, 2) == {
        "conv1": (24, 11, 11), "pool1": (24, 5, 5), "conv2": (64, 5, 5),
        "pool2": (64, 2, 2), "conv3": (96, 2, 2), "conv4": (96, 2, 2),
        "conv5": (64, 2, 2), "pool5": (64, 1, 1),
    }


@pytest.fixture(scope="module")
def trunks():
    torch.manual_seed(0)
    return {1.0: CaffeNetBN(width=1.0, conv1_stride=2).eval(),
            0.25: CaffeNetBN(width=0.25, conv1_stride=2).eval()}


@pytest.mark.parametrize("case, width, size, stride, pool5", CASES, ids=[c[0] for c in CASES])
def test_block_shapes_match_caffenet_formulas(trunks, case, width, size, stride, pool5):
    net = trunks[width]
    expected = expected_shapes(size, width, stride)
    assert expected["pool5"] == pool5
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        for name in BLOCKS:
            assert net.output_shape(size, name, conv1_stride=stride) == expected[name], name
            y = net(x, upto=name, conv1_stride=stride)
            assert tuple(y.shape) == (1, *expected[name]), name
    assert net.out_channels == pool5[0]


def test_output_shape_keeps_training_mode():
    net = CaffeNetBN(width=0.25, conv1_stride=2)
    assert net.training
    net.output_shape(32)
    assert net.training
    net.eval()
    net.output_shape(32)
    assert not net.training


def test_upto_returns_prefix_of_the_full_forward(trunks):
    net = trunks[0.25]
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        h = x
        for name in BLOCKS:
            block = getattr(net, name)
            h = block(h)
            torch.testing.assert_close(net(x, upto=name), h, rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["fc6", "conv6", "", "POOL5"])
def test_unknown_layer_raises(trunks, bad):
    with pytest.raises(ValueError, match="unknown layer"):
        trunks[0.25](torch.rand(1, 3, 32, 32), upto=bad)


def test_conv1_stride_override_changes_size_not_parameters():
    torch.manual_seed(1)
    net = CaffeNetBN(width=0.25, conv1_stride=2).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    n_params = sum(p.numel() for p in net.parameters())
    x = torch.rand(1, 3, 227, 227)
    with torch.no_grad():
        y2 = net(x)
        y4 = net(x, conv1_stride=4)
    assert tuple(y2.shape[1:]) == expected_shapes(227, 0.25, 2)["pool5"] == (64, 13, 13)
    assert tuple(y4.shape[1:]) == expected_shapes(227, 0.25, 4)["pool5"] == (64, 6, 6)
    assert net.output_shape(227, conv1_stride=4) == (64, 6, 6)
    assert net.output_shape(227) == (64, 13, 13)  # the override does not stick
    assert sum(p.numel() for p in net.parameters()) == n_params
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # same weights as a trunk built with stride 4
    other = CaffeNetBN(width=0.25, conv1_stride=4).eval()
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x), y4, rtol=1e-5, atol=1e-5)


def test_width_scales_channels_and_rejects_non_positive():
    net = CaffeNetBN(width=0.5)
    assert net.channels == {"conv1": 48, "conv2": 128, "conv3": 192, "conv4": 192, "conv5": 128}
    assert CaffeNetBN(width=0.001).channels == dict.fromkeys(CONVS, 1)
    for w in (0, -1.0):
        with pytest.raises(ValueError, match="width"):
            CaffeNetBN(width=w)


def test_batch_of_tiles_equals_per_tile_calls_in_eval(trunks):
    net = trunks[0.25]
    gen = torch.Generator().manual_seed(2)
    # warm BN statistics away from the defaults so eval mode is not trivial
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
    b = 3
    tiles = torch.rand(b * 9, 3, 32, 32, generator=gen)
    with torch.no_grad():
        batched = net(tiles)
        single = torch.cat([net(tiles[i : i + 1]) for i in range(b * 9)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
