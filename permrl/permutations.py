"""Permutation sets Psi (docs/design.md §2, paper Sect. 3.1).

Greedy maximal-Hamming selection of a permutation set, inversion, and validated, checksummed
storage of a set.

Convention (Eq. 1): applying ``psi`` to parts ``(x_1, ..., x_n)`` gives ``(x_psi1, ..., x_psin)``,
i.e. output position ``k`` holds part ``psi[k]``. Tiles and frames alike are shuffled so by
:func:`permrl.data.samples.shuffle_tiles`, the one implementation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, TypeVar

import numpy as np
import torch

from permrl.errors import UserError
from permrl.files import atomic_path, write_atomic

__all__ = [
    "CRITERIA",
    "PermutationFileError",
    "all_permutations",
    "hamming_stats",
    "invert_permutation",
    "load_permutations",
    "permutation_checksum",
    "reversal_twins",
    "save_permutations",
    "select_permutations",
    "validate_permutations",
]

CRITERIA = ("maxmin", "maxmean")
MAX_ENUMERATED_SIZE = 10  # size! candidates are enumerated up to this size, pooled above

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


class PermutationFileError(UserError):
    """A permutation set (on disk or in memory) is missing, unreadable or invalid."""


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


def all_permutations(size: int) -> np.ndarray:
    """All ``size!`` permutations of ``0..size-1`` in lexicographic order, uint8 ``(size!, size)``.

    Built vectorised: the permutations with first element ``i`` are ``i`` followed by the
    permutations of ``size - 1`` with every value ``>= i`` shifted up by one (order-preserving).
    """
    if not 1 <= size <= MAX_ENUMERATED_SIZE:
        raise ValueError(f"all_permutations: size must be in 1..{MAX_ENUMERATED_SIZE}, got {size}")
    perms = np.zeros((1, 0), dtype=np.uint8)
    for m in range(1, size + 1):
        rows = len(perms)
        out = np.empty((m * rows, m), dtype=np.uint8)
        for i in range(m):
            block = out[i * rows : (i + 1) * rows]
            block[:, 0] = i
            block[:, 1:] = perms + (perms >= i)
        perms = out
    return perms


def _random_pool(
    size: int, pool_size: int, first: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``pool_size`` distinct seeded random permutations (uint8), ``first`` at row 0."""
    pool_size = min(pool_size, math.factorial(size))
    rows = [first.astype(np.uint8)[None]]
    have = 1
    seen = {first.astype(np.uint8).tobytes()}
    identity = np.arange(size, dtype=np.uint8)
    while have < pool_size:
        want = pool_size - have
        draw = rng.permuted(np.tile(identity, (want + want // 8 + 16, 1)), axis=1)
        keep = []
        for r, row in enumerate(draw):
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                keep.append(r)
                if len(keep) == want:
                    break
        rows.append(draw[keep])
        have += len(keep)
    return np.concatenate(rows)


def select_permutations(
    count: int,
    size: int,
    seed: int = 0,
    criterion: str = "maxmin",
    include_identity: bool = False,
    pool_size: int = 200_000,
    exclude_reversals: bool = False,
) -> np.ndarray:
    """Greedily choose ``count`` distinct permutations of ``0..size-1``, far apart in Hamming.

    Starts from a seeded random permutation (the identity if ``include_identity``), then adds the
    candidate with the largest minimum (``maxmin``) or mean (``maxmean``) Hamming distance to the
    chosen ones; ties go to the lowest candidate index. Candidates are all ``size!``
    permutations (lexicographic) for ``size <= 10``, else a seeded random pool of ``pool_size``
    distinct permutations. A running min/sum keeps the cost at O(count * candidates * size).
    ``exclude_reversals``: once a permutation is chosen its reversal twin ``size - 1 - psi``
    (``reversal_twins``) is never chosen; then at most ``size! / 2`` can be chosen.
    Returns an int64 array ``(count, size)``.

    >>> select_permutations(4, 3, seed=0)  # 4 of the 3! orders of 3 parts
    array([[2, 0, 1],
           [0, 1, 2],
           [1, 2, 0],
           [0, 2, 1]])
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
    if size < 2:
        raise ValueError(f"permutation size must be >= 2, got {size}")
    if size > 255:
        raise ValueError(f"permutation size must be <= 255, got {size}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    n_fact = math.factorial(size)
    if count > n_fact:
        raise ValueError(
            f"cannot choose {count} distinct permutations of size {size}: only {size}! = {n_fact}"
        )
    if exclude_reversals and count > n_fact // 2:
        raise ValueError(
            f"cannot choose {count} permutations of size {size} without reversal twins: "
            f"only {size}!/2 = {n_fact // 2}"
        )

    rng = np.random.default_rng(seed)
    if include_identity:
        first = np.arange(size, dtype=np.int64)
    else:
        first = rng.permutation(size).astype(np.int64)

    if size <= MAX_ENUMERATED_SIZE:
        cands = all_permutations(size)
        first_idx = _lexicographic_rank(first)
    else:
        if count > pool_size:
            raise ValueError(
                f"count {count} exceeds the candidate pool_size {pool_size} for size {size}"
            )
        cands = _random_pool(size, pool_size, first, rng)
        first_idx = 0

    cols = np.ascontiguousarray(cands.T)  # (size, N): one contiguous row per position
    n_cands = cols.shape[1]
    twin_of = _candidate_twins(cands, size <= MAX_ENUMERATED_SIZE) if exclude_reversals else None
    dist = np.empty(n_cands, dtype=np.uint8)
    mismatch = np.empty(n_cands, dtype=np.bool_)
    if criterion == "maxmin":
        score = np.full(n_cands, 255, dtype=np.uint8)  # running min over the chosen set
    else:
        score = np.zeros(n_cands, dtype=np.int64)  # running sum over the chosen set
    chosen_score = np.iinfo(np.int64).min // 2  # maxmean: masks chosen candidates for good

    chosen = np.empty(count, dtype=np.int64)
    idx = first_idx
    for step in range(count):
        chosen[step] = idx
        if step == count - 1:
            break
        perm = cands[idx]
        np.not_equal(cols[0], perm[0], out=mismatch)
        dist[:] = mismatch
        for k in range(1, size):
            np.not_equal(cols[k], perm[k], out=mismatch)
            dist += mismatch
        if criterion == "maxmin":
            np.minimum(score, dist, out=score)  # chosen candidates reach 0 and stay there
        else:
            score += dist
            score[idx] = chosen_score
        if twin_of is not None and twin_of[idx] >= 0:  # the twin is out for good as well
            score[twin_of[idx]] = 0 if criterion == "maxmin" else chosen_score
        idx = int(np.argmax(score))  # first maximum: lowest candidate index wins ties
    return cands[chosen].astype(np.int64)


def _candidate_twins(cands: np.ndarray, enumerated: bool) -> np.ndarray:
    """Index of each candidate's reversal twin among `cands`, -1 when it is not a candidate.

    Replacing every entry v by n - 1 - v reverses the lexicographic order, so among all n!
    (enumerated) candidates the twin of index i is n! - 1 - i; a pool is searched by value.
    """
    if enumerated:
        return np.arange(len(cands) - 1, -1, -1, dtype=np.int64)
    return reversal_twins(cands)


def reversal_twins(perms: Any) -> np.ndarray:
    """(P,) index in `perms` (P, u) of each row's reversal twin u - 1 - psi, -1 when absent.

    Shuffling a clip played backwards by psi gives the same frames as shuffling the clip by
    u - 1 - psi (Eq. 1: position k shows frame u - 1 - psi_k). When the motion in a clip could
    run either way (a pan, a swing), psi and its twin cannot be told apart.
    """
    arr = np.ascontiguousarray(np.asarray(perms, dtype=np.int64))
    index = {row.tobytes(): i for i, row in enumerate(arr)}
    twins = np.ascontiguousarray(arr.shape[1] - 1 - arr)
    return np.array([index.get(row.tobytes(), -1) for row in twins], dtype=np.int64)


def _lexicographic_rank(perm: np.ndarray) -> int:
    """Index of ``perm`` in the lexicographic enumeration of all permutations of its size."""
    n = len(perm)
    rank = 0
    remaining = list(range(n))
    for k, v in enumerate(perm.tolist()):
        pos = remaining.index(v)
        rank += pos * math.factorial(n - 1 - k)
        remaining.pop(pos)
    return rank


def hamming_stats(perms: Any) -> dict[str, float]:
    """Minimum, mean and maximum pairwise Hamming distance over distinct pairs of rows."""
    arr = np.asarray(perms)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"hamming_stats needs a 2-D array with >= 2 rows, got shape {arr.shape}")
    m, n = arr.shape
    chunk = max(1, (1 << 24) // max(1, m * n))
    lo, hi, total = n + 1, -1, 0
    for a in range(0, m - 1, chunk):
        b = min(a + chunk, m - 1)
        block = (arr[a:b, None, :] != arr[None, :, :]).sum(-1)  # (b - a, m)
        upper = np.arange(m)[None, :] > np.arange(a, b)[:, None]
        vals = block[upper]
        lo, hi, total = min(lo, int(vals.min())), max(hi, int(vals.max())), total + int(vals.sum())
    pairs = m * (m - 1) // 2
    return {"min": lo, "mean": total / pairs, "max": hi}


# --------------------------------------------------------------------------------------------
# Inverting permutations
# --------------------------------------------------------------------------------------------


def invert_permutation(perm: ArrayOrTensor) -> ArrayOrTensor:
    """Inverse permutation(s) along the last axis: ``inv[perm[k]] = k`` (single or batched)."""
    if isinstance(perm, torch.Tensor):
        idx = perm.long()
        src = torch.arange(idx.shape[-1], device=idx.device).expand(idx.shape).contiguous()
        return torch.empty_like(idx).scatter_(-1, idx, src)
    idx = np.asarray(perm).astype(np.int64, copy=False)
    inv = np.empty_like(idx)
    src = np.broadcast_to(np.arange(idx.shape[-1], dtype=np.int64), idx.shape)
    np.put_along_axis(inv, idx, src, axis=-1)
    return inv


# --------------------------------------------------------------------------------------------
# Validation and storage
# --------------------------------------------------------------------------------------------


def validate_permutations(perms: Any) -> np.ndarray:
    """Check ``perms`` is a 2-D integer array of distinct permutations of ``0..n-1``.

    Returns it as a C-contiguous int64 array; raises :class:`PermutationFileError` otherwise.
    """
    arr = np.asarray(perms)
    if arr.ndim != 2:
        raise PermutationFileError(f"expected a 2-D (count, size) array, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise PermutationFileError(f"expected an integer array, got dtype {arr.dtype}")
    count, n = arr.shape
    if count < 1 or n < 1:
        raise PermutationFileError(f"expected a non-empty (count, size) array, got {arr.shape}")
    bad = ((arr < 0) | (arr >= n)).any(axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise PermutationFileError(f"row {r} has values outside 0..{n - 1}: {arr[r].tolist()}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    bad = (np.sort(arr, axis=1) != np.arange(n)).any(axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise PermutationFileError(f"row {r} repeats a value, not a permutation: {arr[r].tolist()}")
    _, first, inverse = np.unique(arr, axis=0, return_index=True, return_inverse=True)
    first_of_row = first[inverse.reshape(-1)]
    dup = np.flatnonzero(first_of_row != np.arange(count))
    if dup.size:
        j = int(dup[0])
        raise PermutationFileError(f"rows {int(first_of_row[j])} and {j} are the same permutation")
    return arr


def permutation_checksum(perms: Any) -> str:
    """sha256 hex digest of the shape and the little-endian int64 C-contiguous bytes."""
    arr = np.ascontiguousarray(np.asarray(perms), dtype="<i8")
    digest = hashlib.sha256()
    digest.update(("shape=" + ",".join(str(s) for s in arr.shape) + ";").encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def _sidecar(path: str | os.PathLike[str]) -> str:
    return os.fspath(path) + ".json"


def save_permutations(path: str | os.PathLike[str], perms: Any, seed: int, criterion: str) -> str:
    """Write ``perms`` (int64 ``.npy``) and a ``path + ".json"`` sidecar, atomically.

    The sidecar records checksum, seed, criterion, count and size. Returns the checksum.
    """
    arr = validate_permutations(perms)
    checksum = permutation_checksum(arr)
    meta = {
        "checksum": checksum,
        "seed": seed,
        "criterion": criterion,
        "count": int(arr.shape[0]),
        "size": int(arr.shape[1]),
    }
    target = os.fspath(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    text = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    write_atomic(_sidecar(target), text)
    return checksum


def load_permutations(path: str | os.PathLike[str]) -> np.ndarray:
    """Load and validate a permutation set saved by :func:`save_permutations`.

    Checks the file loads, holds distinct permutations, and matches its sidecar checksum when
    a sidecar exists. Raises :class:`PermutationFileError` naming ``path`` otherwise.
    """
    target = os.fspath(path)
    if not os.path.isfile(target):
        raise PermutationFileError(f"{target}: permutation file not found")
    try:
        raw = np.load(target, allow_pickle=False)
    except Exception as exc:  # any load failure becomes one clear error
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PermutationFileError(f"{target}: cannot load permutations ({msg})") from None
    if not isinstance(raw, np.ndarray):
        raise PermutationFileError(f"{target}: expected a single .npy array, not an archive")
    try:
        arr = validate_permutations(raw)
    except PermutationFileError as exc:
        raise PermutationFileError(f"{target}: {exc}") from None
    sidecar = _sidecar(target)
    if os.path.exists(sidecar):
        try:
            with open(sidecar, encoding="utf-8") as fh:
                expected = json.load(fh)["checksum"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PermutationFileError(f"{sidecar}: unreadable sidecar ({exc})") from None
        actual = permutation_checksum(arr)
        if actual != expected:
            raise PermutationFileError(
                f"{target}: checksum mismatch with {sidecar} (file {actual[:12]}..., "
                f"sidecar {str(expected)[:12]}...)"
            )
    return arr
