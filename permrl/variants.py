"""The variants of Table 5 and where their cells live (no training code: the report reads it).

A variant is a name (S, S+P, T, T+P, S&T, S+T, S+T+P, and beyond the paper the adaptive
baselines and the ceiling arm) and the config keys that make it; `permrl.ablate` trains each for
every seed into `cell_dir(OUT, variant, seed)`.
"""

from __future__ import annotations

from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "S": ["tasks=[spatial]", "policy=uniform"],
    "S+P": ["tasks=[spatial]", "policy=reinforce"],
    "T": ["tasks=[temporal]", "policy=uniform"],
    "T+P": ["tasks=[temporal]", "policy=reinforce"],
    "S&T": ["tasks=[spatial, temporal]", "policy=uniform"],  # + serial_switch = steps // 2
    "S+T": ["tasks=[spatial, temporal]", "policy=uniform"],
    "S+T+P": ["tasks=[spatial, temporal]", "policy=reinforce"],
    # Beyond the paper: simple adaptive samplers over the same groups (permrl.policy.bandits).
    "S+exp3": ["tasks=[spatial]", "policy=exp3"],
    "S+hardness": ["tasks=[spatial]", "policy=hardness"],
    "T+exp3": ["tasks=[temporal]", "policy=exp3"],
    "T+hardness": ["tasks=[temporal]", "policy=hardness"],
    "S+T+exp3": ["tasks=[spatial, temporal]", "policy=exp3"],
    "S+T+hardness": ["tasks=[spatial, temporal]", "policy=hardness"],
    # The ceiling arm: always the hardest half of Psi (bandit.fixed_share), re-chosen at each
    # state. Does any choice of permutations beat uniform downstream at this scale?
    "S+fixed": ["tasks=[spatial]", "policy=fixed"],
    "T+fixed": ["tasks=[temporal]", "policy=fixed"],
    "S+T+fixed": ["tasks=[spatial, temporal]", "policy=fixed"],
}
KS = ("top1", "top5", "top10", "top20", "top50")
"""The retrieval recalls an ablation reports."""


def cell_dir(out: Path, variant: str, seed: int) -> Path:
    return out / variant.replace("&", "_then_") / f"seed{seed}"


def uniform_twin(variant: str) -> str | None:
    """The uniform variant an adaptive one is compared with: the same tasks trained the same
    way with `policy=uniform` (S+P -> S, T+exp3 -> T, S+T+P -> S+T); None for a uniform one."""
    tasks, policy = VARIANTS[variant]
    if policy == "policy=uniform":
        return None
    return next(v for v, (t, p) in VARIANTS.items()
                if t == tasks and p == "policy=uniform" and v != "S&T")
