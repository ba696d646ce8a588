"""The network state of Sect. 3.2: softmax ratios (Eq. 3), state matrix (Eq. 4), error (Eq. 6).

`compute_state` is the exact, cheap path of design §6: trunk + fc6 run once per validation tile
(frame); every permutation then only re-indexes the cached fc6 features inside the head
(`state_from_features`, which any head and features of one's own can use).
`sharded_state` splits X_val across torchrun's processes (bitwise the one-process state).
`naive_state` is the reference: shuffle the parts by every permutation and run the whole model.
Both run in eval mode, so they agree to float tolerance.

Ties (Eq. 3 / Eq. 6): if the true class l ties with the highest other class, the ratio is exactly
1, and `correct` follows `argmax` (the first maximal index), so ratio > 1 implies correct and
correct implies ratio >= 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from permrl.data.samples import shuffle_tiles

if TYPE_CHECKING:
    from permrl.distributed import Distributed


def softmax_ratio(logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. 3: y_l = (y*_l + 1) / (y*_p + 1), p the highest class other than l; (N, C) -> (N,).

    0.5 <= y_l <= 2, and y_l > 1 iff l is the unique argmax of the softmax y* (Eq. 2).

    >>> softmax_ratio(torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]), torch.tensor([0, 0]))
    tensor([1.3378, 0.6546])
    """
    probs = torch.softmax(logits.float(), dim=-1)  # Eq. 2
    labels = labels.to(probs.device).long().view(-1, 1)
    y_l = probs.gather(1, labels).squeeze(1)
    y_p = probs.scatter(1, labels, -1.0).amax(dim=1)  # highest class other than l
    return (y_l + 1.0) / (y_p + 1.0)  # Eq. 3


def pair_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """-log y*_l per row (N, C) -> (N,): the cross-entropy of each permuted sample."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -logp.gather(1, labels.to(logp.device).long().view(-1, 1)).squeeze(1)


@dataclass
class NetworkState:
    """State s (Eq. 4) and error E (Eq. 6) of one task on its validation set."""

    ratios: Tensor  # (|Psi|, |X_val|) float: s, row i = permutation psi_i (Eq. 4)
    predicted: Tensor  # (|Psi|, |X_val|) long: argmax of y*, the predicted permutation
    error: float  # Eq. 6: 1 - mean(correct)
    cross_entropy: Tensor | None = None  # (|Psi|, |X_val|): -log y*_l, from the same logits

    @classmethod
    def from_matrices(cls, ratios: Tensor, predicted: Tensor,
                      cross_entropy: Tensor | None = None) -> NetworkState:
        """The state with its error, Eq. 6: E = 1 - mean over all |Psi| x |X_val| pairs."""
        state = cls(ratios, predicted, 0.0, cross_entropy)
        state.error = 1.0 - state.correct.double().mean().item()
        return state

    @property
    def correct(self) -> Tensor:
        """(|Psi|, |X_val|) bool: the argmax of y* is the true permutation."""
        return self.predicted == torch.arange(self.predicted.shape[0])[:, None]

    def accuracy_up_to(self, twins: Tensor) -> float:
        """Accuracy when predicting a permutation's twin counts too; twins (|Psi|,) is the
        index of each permutation's twin in Psi, -1 without one (`reversal_twins`)."""
        twin_hit = (self.predicted == twins.view(-1, 1)) & (twins.view(-1, 1) >= 0)
        return (self.correct | twin_hit).double().mean().item()

    @property
    def per_permutation_error(self) -> Tensor:
        """(|Psi|,) validation error of each permutation (the rows of Fig. 6)."""
        return 1.0 - self.correct.float().mean(dim=1)


def _device_of(model: nn.Module, device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


def state_matrices(head: nn.Module, features: Tensor, permutations: Tensor,
                   permutation_chunk: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """(ratios, predicted, cross-entropies), each (|Psi|, V) on the CPU, of a head on cached
    per-part features (V, n, D) under every permutation (Eq. 3, 4): one head call per chunk of
    `permutation_chunk` permutations, each only re-indexing the features. Call it in eval mode
    without gradients (`state_from_features` does)."""
    device = features.device
    perms = permutations.long().to(device)
    num_perms, num_val = perms.shape[0], features.shape[0]
    ratios = torch.empty(num_perms, num_val)
    predicted = torch.empty(num_perms, num_val, dtype=torch.long)
    cross_entropy = torch.empty(num_perms, num_val)
    for p0 in range(0, num_perms, permutation_chunk):
        psi = perms[p0 : p0 + permutation_chunk]
        logits = head.permutation_logits(features, psi, permutation_chunk)  # (v, p, C)
        labels = torch.arange(p0, p0 + psi.shape[0], device=device).expand(num_val, -1)
        flat, flat_labels = logits.flatten(0, 1), labels.flatten()
        ratios[p0 : p0 + psi.shape[0]] = softmax_ratio(flat, flat_labels).view_as(labels).T.cpu()
        cross_entropy[p0 : p0 + psi.shape[0]] = (
            pair_cross_entropy(flat, flat_labels).view_as(labels).T.cpu())
        predicted[p0 : p0 + psi.shape[0]] = flat.argmax(dim=1).view_as(labels).T.cpu()
    return ratios, predicted, cross_entropy


def state_from_features(head: nn.Module, features: Tensor, permutations: Tensor, *,
                        permutation_chunk: int = 256) -> NetworkState:
    """The state s (Eq. 3, 4, 6) of any head with `permutation_logits(features, psi, chunk)`
    (`SpatialHead`, `TemporalHead`, or a user's own) from the per-part features of X_val
    (V, n, D) it was given once, e.g. from a network of one's own:

        feats = my_trunk_and_fc6(val_tiles)             # (V, n, D), no shuffling
        state = permrl.state_from_features(my_head, feats, psi)

    The head runs in eval mode without gradients (its mode is restored)."""
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            return NetworkState.from_matrices(*state_matrices(head, features, permutations,
                                                               permutation_chunk))
    finally:
        head.train(was_training)


def compute_state(
    model: nn.Module,
    task: str,
    val_parts: Tensor,
    permutations: Tensor,
    *,
    sample_chunk: int = 8,
    permutation_chunk: int = 256,
    device: torch.device | str | None = None,
) -> NetworkState:
    """Exact state of an `OrderingNet`-shaped model (`part_features`, `heads`) from cached fc6
    features (design §6); memory bounded by the two chunk sizes.

    val_parts: (|X_val|, n, 3, t, t) unshuffled tiles (frames); permutations: (|Psi|, n).
    One head call per (sample chunk, permutation chunk): at most sample_chunk x
    permutation_chunk x |Psi| logits (and as many fc7 rows) exist at a time. The spatial head
    recomputes its W_k f_i projection per call, so few large permutation chunks are cheaper
    than many small ones at the same memory (8 x 256 vs 32 x 64: 7.3 s vs 9.5 s at the `cpu`
    preset, 32 s vs 50 s at `paper`, |Psi| = 1000, |X_val| = 100, 2 cores).
    """
    device = _device_of(model, device)
    permutations = permutations.long().to(device)  # once, not per sample chunk
    empty = torch.empty(permutations.shape[0], 0)  # a process with no share of X_val
    chunks = [(empty, empty.long(), empty)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for v0 in range(0, val_parts.shape[0], sample_chunk):
                feats = model.part_features(task, val_parts[v0 : v0 + sample_chunk].to(device))
                chunks.append(state_matrices(model.heads[task], feats, permutations,
                                             permutation_chunk))
    finally:
        model.train(was_training)
    ratios, predicted, cross_entropy = (torch.cat(m, dim=1) for m in zip(*chunks, strict=True))
    return NetworkState.from_matrices(ratios, predicted, cross_entropy)


def naive_state(
    model: nn.Module,
    task: str,
    val_parts: Tensor,
    permutations: Tensor,
    chunk: int = 256,
    device: torch.device | str | None = None,
) -> NetworkState:
    """Reference state: every (psi, x) pair shuffled by Eq. 1 and run through the whole model.

    `chunk` is the number of shuffled samples per forward pass.
    """
    device = _device_of(model, device)
    perms = permutations.long().to(device)
    num_perms, num_val = perms.shape[0], val_parts.shape[0]
    pair_perm = torch.arange(num_perms).repeat_interleave(num_val)  # pair k = (psi, x)
    pair_val = torch.arange(num_val).repeat(num_perms)
    ratios = torch.empty(num_perms * num_val)
    predicted = torch.empty(num_perms * num_val, dtype=torch.long)
    cross_entropy = torch.empty(num_perms * num_val)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k0 in range(0, num_perms * num_val, chunk):
                idx_p, idx_v = pair_perm[k0 : k0 + chunk], pair_val[k0 : k0 + chunk]
                parts = shuffle_tiles(val_parts[idx_v].to(device), perms, idx_p)  # Eq. 1
                logits = model.logits(task, parts)
                labels = idx_p.to(device)
                ratios[k0 : k0 + len(idx_p)] = softmax_ratio(logits, labels).cpu()
                predicted[k0 : k0 + len(idx_p)] = logits.argmax(dim=1).cpu()
                cross_entropy[k0 : k0 + len(idx_p)] = pair_cross_entropy(logits, labels).cpu()
    finally:
        model.train(was_training)
    return NetworkState.from_matrices(ratios.view(num_perms, num_val),
                                     predicted.view(num_perms, num_val),
                                     cross_entropy.view(num_perms, num_val))


def puzzle_accuracy(
    model: nn.Module, task: str, val_parts: Tensor, permutations: Tensor
) -> float:
    """Accuracy over all |Psi| x |X_val| permuted validation samples: 1 - Eq. 6 error.

    The trunk and fc6 run once per validation tile (frame); every permutation is then evaluated
    from the cached features (exact in eval mode, design §6).
    """
    return 1.0 - compute_state(model, task, val_parts, permutations).error


def state_shards(num_val: int, world_size: int, sample_chunk: int) -> list[range]:
    """Each process's block of X_val, in whole `sample_chunk`s, so that every chunk is computed
    exactly as one process computes it (the state is then bitwise the one-process state)."""
    chunks = -(-num_val // sample_chunk)
    per = [chunks // world_size + (r < chunks % world_size) for r in range(world_size)]
    starts = [sum(per[:r]) * sample_chunk for r in range(world_size + 1)]
    return [range(min(starts[r], num_val), min(starts[r + 1], num_val))
            for r in range(world_size)]


def sharded_state(
    model: nn.Module, task: str, val_parts: torch.Tensor, permutations: torch.Tensor,
    env: Distributed, sample_chunk: int = 8,
) -> NetworkState:
    """`compute_state` with X_val split across the processes, gathered on all of them."""
    if not env.enabled:
        return compute_state(model, task, val_parts, permutations, sample_chunk=sample_chunk)
    shards = state_shards(val_parts.shape[0], env.world_size, sample_chunk)
    mine = shards[env.rank]
    local = compute_state(model, task, val_parts[mine.start : mine.stop], permutations,
                          sample_chunk=sample_chunk)
    counts = [len(s) for s in shards]
    ratios = env.gather_columns(local.ratios, counts)
    predicted = env.gather_columns(local.predicted, counts)
    cross_entropy = env.gather_columns(local.cross_entropy, counts)
    return NetworkState.from_matrices(ratios, predicted, cross_entropy)
