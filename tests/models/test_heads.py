"""Spatial head, OrderingNet and the cached-feature permutation logits (design §4, 6)."""

from __future__ import annotations

import itertools

import pytest
import torch

from permrl.models.heads import OrderingNet, SpatialHead, TemporalHead
from permrl.models.trunk import CaffeNetBN


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny convolutions: intra-op threads only add latency (badly so on a loaded machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _head(n_tiles=9, n_perms=7, c=4, h=2, fc6=6, fc7=10, seed=0):
    torch.manual_seed(seed)
    return SpatialHead(c * h * h, n_tiles, n_perms, fc6_dim=fc6, fc7_dim=fc7, dropout=0.5)


def test_spatial_head_shape():
    head = _head().eval()
    b = 5
    logits = head(torch.rand(b * 9, 4, 2, 2))
    assert logits.shape == (b, 7)
    assert head.part_features(torch.rand(b * 9, 4, 2, 2)).shape == (b, 9, 6)


def test_spatial_head_equals_explicit_concat():
    head = _head().eval()
    x = torch.rand(2 * 9, 4, 2, 2)
    with torch.no_grad():
        f6 = torch.relu(x.flatten(1) @ head.fc6.fc.weight.T + head.fc6.fc.bias)
        # sample b's tiles are rows 9b..9b+8: concatenated in input order
        cat = torch.cat([torch.cat(list(f6[9 * b : 9 * b + 9])) for b in range(2)]).view(2, 54)
        h7 = torch.relu(cat @ head.fc7.weight.T + head.fc7.bias)
        ref = h7 @ head.classifier.weight.T + head.classifier.bias
        torch.testing.assert_close(head(x), ref, rtol=1e-5, atol=1e-5)


def test_fc6_is_applied_per_tile():
    head = _head().eval()
    b, n = 2, 9
    x = torch.rand(b * n, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = head.part_features(x)
        for sample, j in [(0, 0), (0, 4), (1, 8)]:
            y = x.clone()
            y[sample * n + j] += 1.0  # change tile j of one sample only
            feats = head.part_features(y)
            changed = (feats != base).any(dim=-1)
            expected = torch.zeros(b, n, dtype=torch.bool)
            expected[sample, j] = True
            # only fc6 row j of that sample may change (and it does for this input)
            assert torch.equal(changed, expected)


def _naive(head, feats, perms):
    return torch.stack([head.classify(feats[:, p]) for p in perms], dim=1)


@pytest.mark.parametrize("grid", [2, 3])
@pytest.mark.parametrize("chunk", [1, 3, 5, 64, 1000])
def test_permutation_logits_equals_naive_forward(grid, chunk):
    n = grid * grid
    gen = torch.Generator().manual_seed(grid)
    if grid == 2:
        perms = torch.tensor(list(itertools.permutations(range(4))))  # all 24
    else:
        perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(13)])
    head = _head(n_tiles=n, n_perms=11, seed=grid).eval()
    feats = torch.randn(3, n, 6, generator=gen)
    with torch.no_grad():
        fast = head.permutation_logits(feats, perms, chunk=chunk)
        ref = _naive(head, feats, perms)
    assert fast.shape == (3, perms.shape[0], 11)
    assert (fast - ref).abs().max().item() <= 1e-5


def test_permutation_logits_identity_equals_head_forward():
    head = _head().eval()
    x = torch.rand(2 * 9, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats = head.part_features(x)
        fast = head.permutation_logits(feats, torch.arange(9)[None])
        torch.testing.assert_close(fast[:, 0], head(x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def jigsaw():
    torch.manual_seed(0)
    trunk = CaffeNetBN(width=0.25, conv1_stride=2)
    c, h, w = trunk.output_shape(32)
    head = SpatialHead(c * h * w, 9, 5, fc6_dim=16, fc7_dim=32)
    return OrderingNet(trunk, {"spatial": head}).eval()


@pytest.mark.parametrize("channels_last", [False, True])
def test_jigsaw_end_to_end_shape(jigsaw, channels_last):
    jigsaw.channels_last = channels_last
    with torch.no_grad():
        out = jigsaw.logits("spatial", torch.rand(4, 9, 3, 32, 32))
    assert out.shape == (4, 5)


def test_jigsaw_equals_trunk_then_head(jigsaw):
    x = torch.rand(2, 9, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    jigsaw.channels_last = False
    with torch.no_grad():
        ref = jigsaw.heads["spatial"](jigsaw.trunk(x.view(18, 3, 32, 32)))
        torch.testing.assert_close(jigsaw.logits("spatial", x), ref, rtol=0, atol=0)


def test_jigsaw_channels_last_same_output(jigsaw):
    x = torch.rand(3, 9, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        jigsaw.channels_last = False
        a = jigsaw.logits("spatial", x)
        jigsaw.channels_last = True
        b = jigsaw.logits("spatial", x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# Temporal head ---------------------------------------------------------------------------------


def test_temporal_head_shapes_and_order_sensitivity():
    torch.manual_seed(0)
    head = TemporalHead(in_features=12, num_frames=5, num_permutations=7, fc6_dim=8,
                        hidden=10, dropout=0.0).eval()
    pool5 = torch.rand(3 * 5, 3, 2, 2)
    feats = head.part_features(pool5)
    assert feats.shape == (3, 5, 8)
    logits = head(pool5)
    assert logits.shape == (3, 7)
    # The LSTM sees the frames in input order: reversing them changes the output.
    assert not torch.allclose(head.classify(feats), head.classify(feats.flip(1)))
    # Reference: an explicit per-step LSTM recurrence with the same weights.
    lstm = head.lstm
    h = torch.zeros(3, 10)
    c = torch.zeros(3, 10)
    for t in range(5):
        gates = feats[:, t] @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + h @ lstm.weight_hh_l0.T \
            + lstm.bias_hh_l0
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    torch.testing.assert_close(head.classify(feats), head.classifier(h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_temporal_permutation_logits_equal_naive(chunk):
    torch.manual_seed(1)
    head = TemporalHead(12, 4, 6, fc6_dim=8, hidden=10).eval()
    feats = torch.randn(3, 4, 8)
    perms = torch.stack([torch.randperm(4) for _ in range(6)])
    fast = head.permutation_logits(feats, perms, chunk=chunk)
    naive = torch.stack([torch.stack([head.classify(feats[v : v + 1, perms[p]])[0]
                                      for p in range(6)]) for v in range(3)])
    assert (fast - naive).abs().max().item() <= 1e-5


def test_ordering_net_runs_both_tasks_through_one_trunk():
    torch.manual_seed(2)
    trunk = CaffeNetBN(width=0.125, conv1_stride=2)
    c, h, w = trunk.output_shape(32)
    net = OrderingNet(trunk, {
        "spatial": SpatialHead(c * h * w, 4, 5, fc6_dim=8, fc7_dim=16),
        "temporal": TemporalHead(c * h * w, 6, 7, fc6_dim=8, hidden=12),
    }).eval()
    with torch.no_grad():
        assert net.logits("spatial", torch.rand(2, 4, 3, 32, 32)).shape == (2, 5)
        assert net.logits("temporal", torch.rand(3, 6, 3, 32, 32)).shape == (3, 7)
        assert net.part_features("temporal", torch.rand(3, 6, 3, 32, 32)).shape == (3, 6, 8)
        both = {"spatial": torch.rand(2, 4, 3, 32, 32), "temporal": torch.rand(3, 6, 3, 32, 32)}
        out = net(both)  # one forward for every task of a step
        for task, parts in both.items():
            assert torch.equal(out[task], net.logits(task, parts))


def test_the_lstm_runs_in_float32_under_autocast():
    """Autocast (here CPU's bf16; CUDA's the same way) would run the LSTM in low precision;
    the head runs it in float32 outside autocast: its hidden states equal the float32 ones
    exactly, while the classifier after it still runs under autocast."""
    torch.manual_seed(0)
    head = TemporalHead(32, num_frames=4, num_permutations=6, fc6_dim=8, hidden=16).eval()
    seen = {}
    head.lstm.register_forward_hook(lambda m, args, out: seen.update(dtype=out[1][0].dtype,
                                                                     h=out[1][0]))
    features = torch.randn(3, 4, 8)
    head.classify(features)
    reference = seen["h"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head.classify(features)
    assert seen["dtype"] == torch.float32 and torch.equal(seen["h"], reference)
    assert logits.dtype == torch.bfloat16  # the classifier: autocast as before
