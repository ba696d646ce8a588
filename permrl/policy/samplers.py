"""Permutation samplers behind one small interface.

A sampler answers one question per training batch: which row of Psi goes with each sample?
`UniformSampler` is the jigsaw baseline (every permutation equally likely). `PolicySampler` is
the learned policy of Sect. 3.2: a group of permutations is drawn from pi(. | s_hat), then a
permutation uniformly inside it (then a random training sample: the batch itself). It also keeps
what the policy needs between validations: the groups, s_hat, the error history and the actions
of the running episode.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from permrl.policy.groups import (
    PermutationGroups,
    difficulty_quartiles,
    group_permutations,
    policy_input,
)
from permrl.policy.reinforce import Reinforce, extrapolated_error
from permrl.policy.state import NetworkState


class PermutationSampler(Protocol):
    def draw(self, batch_size: int, generator: torch.Generator,
             trained: torch.Tensor | None = None) -> torch.Tensor:
        """(batch_size,) int64 indices into Psi. `trained`: (batch_size,) bool, the samples that
        will be trained on (the others were unreadable); default all."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class UniformSampler:
    """psi ~ Uniform(Psi), independent of the sample (the baseline of Noroozi & Favaro)."""

    def __init__(self, num_permutations: int) -> None:
        self.num_permutations = num_permutations

    def draw(self, batch_size: int, generator: torch.Generator,
             trained: torch.Tensor | None = None) -> torch.Tensor:
        return torch.randint(0, self.num_permutations, (batch_size,), generator=generator)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "uniform", "num_permutations": self.num_permutations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_permutations = int(state["num_permutations"])


class PolicySampler:
    """Draws permutations from the REINFORCE policy over groups of Psi (Sect. 3.2).

    Until the first state exists every permutation is one group and the draw is uniform.
    `observe(iteration, state)` re-clusters Psi on the new state and fixes s_hat (the policy is
    fixed in between); `begin_episode()` / `end_episode(iteration, state)` bracket the K
    mini-batches whose actions are credited with the reward of Eq. 7.
    """

    def __init__(self, num_permutations: int, reinforce: Reinforce, num_groups: int,
                 seed: int) -> None:
        self.num_permutations, self.reinforce = num_permutations, reinforce
        self.num_groups, self.seed = num_groups, seed
        self.groups: PermutationGroups | None = None
        self.s_hat: torch.Tensor | None = None
        self.errors: list[tuple[int, float]] = []  # (iteration, E) of every validation
        self.quartiles = np.zeros(num_permutations, dtype=np.int64)
        self.episode: list[torch.Tensor] | None = None  # group actions of the running episode
        self.episode_perms: list[torch.Tensor] = []
        self.updates = 0

    # The draw -----------------------------------------------------------------------------
    def mask(self) -> torch.Tensor:
        assert self.groups is not None
        return torch.as_tensor(self.groups.sizes > 0)

    def probabilities(self) -> torch.Tensor:
        if self.s_hat is None:
            return torch.ones(1)
        with torch.no_grad():
            return self.reinforce.policy.distribution(self.s_hat, self.mask()).probs

    def draw(self, batch_size: int, generator: torch.Generator,
             trained: torch.Tensor | None = None) -> torch.Tensor:
        """Permutations for a batch; the actions of the `trained` samples (default all) are the
        episode's: an unreadable sample's action earns no credit in Eq. 9."""
        if self.groups is None or self.s_hat is None:
            return torch.randint(0, self.num_permutations, (batch_size,), generator=generator)
        actions, _ = self.reinforce.act(self.s_hat, self.mask(), batch_size, generator)
        # A permutation uniformly inside each chosen group.
        sizes = torch.as_tensor(self.groups.sizes)[actions]
        offsets = (torch.rand(batch_size, generator=generator) * sizes).long()
        order = torch.as_tensor(np.argsort(self.groups.assignment, kind="stable"))
        starts = torch.as_tensor(np.concatenate([[0], np.cumsum(self.groups.sizes)[:-1]]))
        perms = order[starts[actions] + offsets]
        if self.episode is not None:
            keep = slice(None) if trained is None else trained
            self.episode.append(actions[keep])
            self.episode_perms.append(perms[keep])
        return perms

    # Validation, episodes, updates --------------------------------------------------------
    def observe(self, iteration: int, state: NetworkState) -> None:
        """A new state s_t: regroup Psi (k-means, hardest first) and set s_hat (Eq. 10)."""
        self.errors.append((iteration, state.error))
        ratios = state.ratios.cpu().numpy()
        self.groups = group_permutations(ratios, self.num_groups, self.seed + len(self.errors))
        self.s_hat = policy_input(self.groups, self.num_permutations)
        self.quartiles = difficulty_quartiles(state.per_permutation_error.cpu().numpy())

    def begin_episode(self) -> None:
        self.episode, self.episode_perms = [], []

    def end_episode(self, iteration: int, state: NetworkState) -> dict[str, Any]:
        """Reward (Eq. 7) of the finished episode, REINFORCE update (Eq. 9), then observe."""
        assert self.episode is not None and self.groups is not None and self.s_hat is not None
        actions = torch.cat(self.episode)
        perms = torch.cat(self.episode_perms)
        baseline_error = extrapolated_error(self.errors, iteration)
        record: dict[str, Any] = {
            "group_sizes": self.groups.sizes.tolist(),
            "group_medians": [round(float(m), 5) for m in self.groups.medians],
            "policy_probs": [round(float(p), 5) for p in self.probabilities()],
            "chosen_groups": np.bincount(actions.numpy(), minlength=self.num_groups).tolist(),
            "chosen_quartiles": np.bincount(self.quartiles[perms.numpy()],
                                            minlength=4).tolist(),
            "error_before": self.errors[-1][1],
            "error_after": state.error,
            "extrapolated_error": baseline_error,
        }
        if baseline_error is not None:
            reward = baseline_error - state.error  # Eq. 7
            record["reward"] = reward
            record |= self.reinforce.update(self.s_hat, self.mask(), actions, reward)
            self.updates += 1
        self.episode = None
        self.observe(iteration, state)
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "reinforce", "reinforce": self.reinforce.state_dict(),
                "groups": self.groups, "s_hat": self.s_hat, "errors": list(self.errors),
                "quartiles": self.quartiles, "updates": self.updates,
                "episode": self.episode, "episode_perms": self.episode_perms}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reinforce.load_state_dict(state["reinforce"])
        self.groups, self.s_hat = state["groups"], state["s_hat"]
        self.errors, self.quartiles = list(state["errors"]), state["quartiles"]
        self.updates = state["updates"]
        self.episode, self.episode_perms = state["episode"], state["episode_perms"]
