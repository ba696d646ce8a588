"""Ordering heads (design §4): which permutation of Psi was applied?

Spatial head: fc6 per tile -> concatenate the m*m fc6 outputs in input order -> fc7 -> fc(|Psi_S|).
The first layer after the concatenation (fc7) is kept as one Linear whose weight splits into
blocks W_k, one per input position k, so the policy state can be computed exactly from cached
per-tile features (design §6).

Decision: fc6 and fc7 are followed by BatchNorm, like the trunk's convolutions. Measured on the
`cpu` preset (100 permutations, built-in data): without it the loss stayed at chance (ln 100)
for 1500 steps; with it the loss falls from the first few hundred steps. In eval mode BN is an
affine map applied after the fc7 sum, so the cached state computation stays exact.
"""

from __future__ import annotations

import torch
from torch import nn


class TileFC6(nn.Module):
    """fc6 applied to each tile (frame) independently: flatten pool5 -> Linear -> BN -> ReLU."""

    def __init__(self, in_features: int, fc6_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, fc6_dim)
        self.bn = nn.BatchNorm1d(fc6_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, pool5: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.bn(self.fc(pool5.flatten(1)))))


class SpatialHead(nn.Module):
    """fc6 per tile -> concat (input order) -> fc7 -> BN -> ReLU -> fc over |Psi_S|."""

    def __init__(
        self,
        in_features: int,
        num_tiles: int,
        num_permutations: int,
        fc6_dim: int = 512,
        fc7_dim: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.num_tiles = num_tiles
        self.fc6 = TileFC6(in_features, fc6_dim, dropout)
        self.fc7 = nn.Linear(num_tiles * fc6_dim, fc7_dim)
        self.fc7_bn = nn.BatchNorm1d(fc7_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(fc7_dim, num_permutations)

    def part_features(self, pool5: torch.Tensor) -> torch.Tensor:
        """(B*m*m, C, H, W) trunk output -> (B, m*m, fc6) per-tile features."""
        f = self.fc6(pool5)
        return f.view(-1, self.num_tiles, f.shape[-1])

    def classify(self, group_features: torch.Tensor) -> torch.Tensor:
        """(B, m*m, fc6) features in puzzle order -> (B, |Psi|) logits."""
        return self.after_fc7(self.fc7(group_features.flatten(1)))

    def after_fc7(self, h: torch.Tensor) -> torch.Tensor:
        """(N, fc7) pre-activations -> (N, |Psi|) logits: BN, ReLU, dropout, classifier."""
        return self.classifier(self.dropout(torch.relu(self.fc7_bn(h))))

    def forward(self, pool5: torch.Tensor) -> torch.Tensor:
        return self.classify(self.part_features(pool5))

    def permutation_logits(
        self, features: torch.Tensor, permutations: torch.Tensor, chunk: int = 64
    ) -> torch.Tensor:
        """Logits of every permutation applied to every sample, from cached fc6 (design §6).

        features: (V, n, d) fc6 outputs of the unshuffled tiles; permutations: (P, n).
        Returns (V, P, |Psi|). Exact in eval mode: fc7 is linear in the concatenation, so
        fc7(concat(f_psi1..f_psin)) = b + sum_k W_k f_psik; W_k f_i is computed once for all
        positions k and tiles i, then each permutation costs n vector additions.
        """
        v, n, d = features.shape
        w = self.fc7.weight.view(-1, n, d)  # (fc7, n, d): W_k is w[:, k, :]
        # projected[v, k * n + i] = W_k f_i, contiguous so that a permutation is a sum of rows.
        projected = torch.einsum("ond,vid->vnio", w, features).reshape(v, n * n, -1)
        rows = torch.arange(n, device=features.device) * n  # row of (k, i = 0)
        out = []
        for start in range(0, permutations.shape[0], chunk):
            psi = permutations[start : start + chunk].to(features.device)  # (p, n)
            pick = torch.zeros(psi.shape[0], n * n, device=features.device,
                               dtype=projected.dtype)
            pick.scatter_(1, rows + psi, 1.0)  # one-hot of (k, psi_k) for every k
            h = pick @ projected + self.fc7.bias  # (V, p, fc7) = b + sum_k W_k f_psik
            out.append(self.after_fc7(h.flatten(0, 1)).view(v, psi.shape[0], -1))
        return torch.cat(out, dim=1)


class TemporalHead(nn.Module):
    """fc6 per frame -> LSTM over the u frames (in input order) -> fc over |Psi_T|.

    The last hidden state of a one-layer LSTM summarises the shuffled sequence.
    """

    def __init__(
        self,
        in_features: int,
        num_frames: int,
        num_permutations: int,
        fc6_dim: int = 512,
        hidden: int = 1024,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.fc6 = TileFC6(in_features, fc6_dim, dropout)
        self.lstm = nn.LSTM(fc6_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_permutations)

    def part_features(self, pool5: torch.Tensor) -> torch.Tensor:
        """(B*u, C, H, W) trunk output -> (B, u, fc6) per-frame features."""
        f = self.fc6(pool5)
        return f.view(-1, self.num_frames, f.shape[-1])

    def classify(self, group_features: torch.Tensor) -> torch.Tensor:
        """(B, u, fc6) features in clip order -> (B, |Psi_T|) logits.

        The LSTM runs in its weights' dtype (float32) even under autocast: autocast would run
        the recurrence in bf16 (CPU, and CUDA with a bf16 autocast) or float16 (cuDNN's RNN),
        and the training step has no loss scaler to keep its small gradients from vanishing.
        It is a small share of the step's FLOPs."""
        with torch.autocast(group_features.device.type, enabled=False):
            _, (h, _) = self.lstm(group_features.to(self.lstm.weight_ih_l0.dtype))
        return self.classifier(self.dropout(h[-1]))

    def forward(self, pool5: torch.Tensor) -> torch.Tensor:
        return self.classify(self.part_features(pool5))

    def permutation_logits(
        self, features: torch.Tensor, permutations: torch.Tensor, chunk: int = 64
    ) -> torch.Tensor:
        """(V, u, d) cached fc6 features, (P, u) permutations -> (V, P, |Psi_T|) logits.

        The trunk and fc6 ran once per frame (design §6). Here the LSTM's input projection
        W_ih f + b is computed once per frame too, and the recurrence is run once per distinct
        prefix of the permutations (all permutations starting with the same frames share their
        first states), then the classifier sees each permutation's last hidden state. Exact:
        the same equations as nn.LSTM (gates i, f, g, o), evaluated on fewer inputs. `chunk`
        bounds the number of samples processed at once.
        """
        lstm = self.lstm
        w_hh = lstm.weight_hh_l0
        out = []
        for start in range(0, features.shape[0], chunk):
            f = features[start : start + chunk]
            projected = f @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0  # (v, u, 4H)
            h, c = self.prefix_recurrence(projected, permutations.to(f.device), w_hh)
            out.append(self.classifier(self.dropout(h)))
        return torch.cat(out, dim=0)

    @staticmethod
    def prefix_recurrence(
        projected: torch.Tensor, permutations: torch.Tensor, w_hh: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LSTM over every permutation's frame order, one step per distinct prefix.

        projected: (V, u, 4H) input projections per frame; returns the final (h, c), each
        (V, P, H), for the P permutations.
        """
        v, u = projected.shape[:2]
        hidden = w_hh.shape[1]
        h = projected.new_zeros(v, 1, hidden)
        c = projected.new_zeros(v, 1, hidden)
        parent_of = torch.zeros(permutations.shape[0], dtype=torch.long, device=h.device)
        for t in range(u):
            prefixes, inverse = torch.unique(permutations[:, : t + 1], dim=0, return_inverse=True)
            # The state before step t of each distinct prefix: its parent prefix's state.
            first = torch.full((len(prefixes),), -1, dtype=torch.long, device=h.device)
            first.scatter_reduce_(0, inverse, torch.arange(len(inverse), device=h.device),
                                  reduce="amin", include_self=False)
            parent = parent_of[first]
            gates = projected[:, prefixes[:, t]] + h[:, parent] @ w_hh.T  # (V, U_t, 4H)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c[:, parent] + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            parent_of = inverse
        return h[:, parent_of], c[:, parent_of]


class OrderingNet(nn.Module):
    """The shared trunk and one head per task ("spatial", "temporal").

    `logits(task, parts)`: (B, n, 3, t, t) tiles or frames -> (B, |Psi_task|) logits; all B*n
    parts go through the trunk in one call. `forward({task: parts})` does it for every task of a
    step (S+T), so DistributedDataParallel sees one forward per backward.

    >>> from permrl.models.trunk import CaffeNetBN
    >>> trunk = CaffeNetBN(width=0.125, conv1_stride=2)
    >>> c, h, w = trunk.output_shape(32)  # pool5 of a 32 px tile
    >>> net = OrderingNet(trunk, {"spatial": SpatialHead(c * h * w, num_tiles=4,
    ...                                                  num_permutations=24, fc6_dim=16,
    ...                                                  fc7_dim=32)})
    >>> net.logits("spatial", torch.randn(8, 4, 3, 32, 32)).shape  # 8 puzzles of 4 tiles
    torch.Size([8, 24])
    """

    def __init__(
        self, trunk: nn.Module, heads: dict[str, nn.Module], channels_last: bool = False
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict(heads)
        self.channels_last = channels_last  # ~20% faster convolutions on CPU

    def trunk_output(self, parts: torch.Tensor) -> torch.Tensor:
        x = parts.flatten(0, 1).to(next(self.trunk.parameters()).dtype)  # train.float64
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.trunk(x)

    def part_features(self, task: str, parts: torch.Tensor) -> torch.Tensor:
        """(B, n, 3, t, t) -> (B, n, fc6): what the permutation only reorders."""
        return self.heads[task].part_features(self.trunk_output(parts))

    def logits(self, task: str, parts: torch.Tensor) -> torch.Tensor:
        return self.heads[task](self.trunk_output(parts))

    def forward(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {task: self.logits(task, x) for task, x in parts.items()}

