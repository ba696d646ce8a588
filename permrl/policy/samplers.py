"""Permutation samplers behind one small interface.

A sampler answers one question per training batch: which row of Psi goes with each sample?
`UniformSampler` is the jigsaw baseline (every permutation equally likely); the learned policy
of Sect. 3.2 implements the same `draw` and adds its own state.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class PermutationSampler(Protocol):
    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(batch_size,) int64 indices into Psi."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class UniformSampler:
    """psi ~ Uniform(Psi), independent of the sample (the baseline of Noroozi & Favaro)."""

    def __init__(self, num_permutations: int) -> None:
        self.num_permutations = num_permutations

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_permutations, (batch_size,), generator=generator)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "uniform", "num_permutations": self.num_permutations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_permutations = int(state["num_permutations"])
