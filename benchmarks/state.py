"""Naive vs cached policy state (design §6) at |Psi| = 1000, |X_val| = 100. Run:
    python benchmarks/state.py [--naive-perms N] [--only cpu-spatial,paper-spatial,cpu-temporal]

For each head (random weights, eval mode, random validation parts) it times
  - cached: `compute_state` (trunk + fc6 once per part, the head per permutation), split into
    trunk + fc6 (`part_features` on X_val) and the head part (the rest: permutation logits,
    softmax ratios, correctness);
  - naive: `naive_state` (every (psi, x) pair through the whole model) on the first N
    permutations, scaled linearly to |Psi| when N < |Psi| (the output says so);
and prints max |ratio difference| on the permutations both computed, and naive / cached.
The temporal head uses 7 frames (cpu preset has 6, and 6! = 720 < 1000).
"""

from __future__ import annotations

import argparse
import time

import torch

from permrl.config import load_config
from permrl.models.build import build_model
from permrl.policy.state import compute_state, naive_state
from permrl.tasks import build_permutations

CASES = {
    # name: (preset, overrides, task, naive permutations by default)
    "cpu-spatial": ("cpu", ["spatial.permutations=1000"], "spatial", 1000),
    "paper-spatial": ("paper", [], "spatial", 20),
    "cpu-temporal": ("cpu", ["tasks=[spatial, temporal]", "temporal.frames=7",
                             "temporal.permutations=1000"], "temporal", 1000),
}
VAL = 100


def seconds(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def trunk_seconds(model, task: str, val: torch.Tensor, chunk: int) -> float:
    """The trunk + fc6 part of the cached path: part_features on every validation sample."""
    with torch.no_grad():
        t, _ = seconds(lambda: [model.part_features(task, val[i : i + chunk])
                                for i in range(0, len(val), chunk)])
    return t


def run(name: str, naive_perms: int | None, sample_chunk: int, permutation_chunk: int) -> None:
    preset, overrides, task, default_naive = CASES[name]
    cfg = load_config(preset=preset, overrides=overrides)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    perms = torch.from_numpy(build_permutations(cfg, task)).long()
    n = perms.shape[1]
    tile = cfg.spatial.tile if task == "spatial" else cfg.temporal.frame_size
    val = torch.randn(VAL, n, 3, tile, tile)
    k = min(naive_perms or default_naive, len(perms))
    print(f"\n== {name}: preset {preset}, {task} head, |Psi| = {len(perms)}, |X_val| = {VAL}, "
          f"{n} parts of {tile} px")

    model.part_features(task, val[:2])  # warm-up
    cached_s, cached = seconds(lambda: compute_state(
        model, task, val, perms, sample_chunk=sample_chunk, permutation_chunk=permutation_chunk))
    trunk_s = trunk_seconds(model, task, val, sample_chunk)
    naive_s, naive = seconds(lambda: naive_state(model, task, val, perms[:k]))
    naive_full = naive_s * len(perms) / k
    diff = (naive.ratios - cached.ratios[:k]).abs().max().item()
    same = torch.equal(naive.correct, cached.correct[:k])

    print(f"cached state     {cached_s:8.2f} s  (sample_chunk {sample_chunk}, "
          f"permutation_chunk {permutation_chunk})")
    print(f"  trunk + fc6    {trunk_s:8.2f} s  ({100 * trunk_s / cached_s:.0f}%)")
    print(f"  head + ratios  {cached_s - trunk_s:8.2f} s  "
          f"({100 * (cached_s - trunk_s) / cached_s:.0f}%)")
    if k < len(perms):
        print(f"naive state      {naive_s:8.2f} s on the first {k} permutations -> "
              f"{naive_full:.1f} s for {len(perms)} (scaled linearly)")
    else:
        print(f"naive state      {naive_s:8.2f} s")
    print(f"max |ratio diff| {diff:.2e} on {k} x {VAL} pairs; correctness identical: {same}")
    print(f"speedup naive / cached: {naive_full / cached_s:.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--naive-perms", type=int, default=None,
                   help="permutations for the naive path (default: 1000 cpu, 20 paper)")
    p.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    p.add_argument("--sample-chunk", type=int, default=8)
    p.add_argument("--permutation-chunk", type=int, default=256)
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in a.only.split(","):
        run(name, a.naive_perms, a.sample_chunk, a.permutation_chunk)


if __name__ == "__main__":
    main()
