"""Two simple adaptive samplers over the same groups, to ask whether RL beats simple adaptivity.

Both act where the REINFORCE policy acts (`GroupSampler`): on the k-means groups of Psi,
re-clustered at every state, hardest group first, a permutation uniformly inside the chosen
group. Neither is in the paper; both are baselines for its ablation.

- `Exp3S`: the non-stationary adversarial bandit of Graves et al. 2017 ("Automated curriculum
  learning for neural networks", Sect. 3), rewarded with the same Eq. 7 as the policy. Rewards
  are rescaled to [-1, 1] by the 20th and 80th percentiles of the rewards so far (as there).
  An episode draws K x B actions, not one: the importance-weighted reward of group j is
  r_hat * (n_j / n) / pi_j (n_j of the n actions chose j), unbiased for r_hat like the one-action
  estimate. Exploration mixes in q_j = |c_j| / |Psi| (uniform over Psi) rather than 1/|C|.
- `Hardness`: no learning; group j drawn with probability proportional to the summed
  validation error of its permutations (|c_j| x mean error, so equal errors give uniform over
  Psi), mixed with q for exploration.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor

from permrl.policy.reinforce import group_prior

REWARD_QUANTILES = (0.2, 0.8)  # Graves et al. 2017: rewards rescaled by these percentiles


def _mix(p: Tensor, q: Tensor, exploration: float) -> Tensor:
    return (1.0 - exploration) * p + exploration * q


def _masked_prior(s_hat: Tensor, mask: Tensor | None) -> Tensor:
    return group_prior(torch.as_tensor(s_hat, dtype=torch.float64), mask)


class Exp3S:
    """Exp3.S over the groups: weights w_j, pi = (1 - eps) softmax(w + log q) + eps q."""

    kind = "exp3"

    def __init__(self, num_groups: int, lr: float = 1.0, exploration: float = 0.05,
                 switch: float = 0.01) -> None:
        self.num_groups, self.lr = num_groups, lr
        self.exploration, self.switch = exploration, switch
        self.weights = torch.zeros(num_groups, dtype=torch.float64)
        self.rewards: list[float] = []  # every raw reward so far (for the rescaling quantiles)

    def probabilities(self, s_hat: Tensor, mask: Tensor | None,
                      group_errors: Tensor | None = None) -> Tensor:
        return self._probabilities(s_hat, mask).float()

    def _probabilities(self, s_hat: Tensor, mask: Tensor | None) -> Tensor:
        q = _masked_prior(s_hat, mask)
        logits = self.weights + torch.log(q)  # -inf for empty groups
        return _mix(torch.softmax(logits, 0), q, self.exploration)

    def scaled_reward(self, reward: float) -> float:
        """r in [-1, 1] by the 20th / 80th percentiles of the rewards so far (this one included)."""
        lo, hi = np.quantile(self.rewards, REWARD_QUANTILES)
        if hi <= lo:
            return 0.0
        return float(np.clip(2.0 * (reward - lo) / (hi - lo) - 1.0, -1.0, 1.0))

    def update(self, s_hat: Tensor, mask: Tensor | None, actions: Tensor,
               reward: float) -> dict[str, float]:
        probs = self._probabilities(s_hat, mask)
        self.rewards.append(float(reward))
        r_hat = self.scaled_reward(reward)
        counts = torch.bincount(torch.as_tensor(actions).long(), minlength=self.num_groups)
        share = counts.double() / max(int(counts.sum()), 1)
        allowed = probs > 0
        estimate = torch.zeros_like(probs)
        estimate[allowed] = r_hat * share[allowed] / probs[allowed]  # importance weighted
        step = self.weights + self.lr * estimate
        k = int(allowed.sum())
        if k > 1:  # Exp3.S: a share alpha of every weight's mass spread over the other arms
            mass = torch.where(allowed, torch.exp(step - step[allowed].max()), 0.0)
            others = (mass.sum() - mass) / (k - 1)
            new = torch.log((1 - self.switch) * mass + self.switch * others) + step[allowed].max()
            self.weights = torch.where(allowed, new, self.weights)
        else:
            self.weights = step
        self.weights = self.weights - self.weights.max()  # softmax-invariant; keeps w bounded
        return {"scaled_reward": r_hat}

    def state_dict(self) -> dict[str, Any]:
        return {"num_groups": self.num_groups, "weights": self.weights.clone(),
                "rewards": list(self.rewards)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_groups"] != self.num_groups:
            raise ValueError(f"exp3 state has num_groups={state['num_groups']}, this sampler "
                             f"{self.num_groups}")
        self.weights = state["weights"].clone()
        self.rewards = list(state["rewards"])


class Hardness:
    """pi_j proportional to the summed validation error of group j, mixed with q."""

    kind = "hardness"

    def __init__(self, num_groups: int, exploration: float = 0.05) -> None:
        self.num_groups, self.exploration = num_groups, exploration

    def probabilities(self, s_hat: Tensor, mask: Tensor | None,
                      group_errors: Tensor | None = None) -> Tensor:
        q = _masked_prior(s_hat, mask)
        if group_errors is None:
            return q.float()
        summed = q * torch.as_tensor(group_errors, dtype=torch.float64)  # ~ |c_j| x mean error
        if not summed.sum() > 0:  # nothing wrong anywhere: uniform over Psi
            return q.float()
        return _mix(summed / summed.sum(), q, self.exploration).float()

    def update(self, s_hat: Tensor, mask: Tensor | None, actions: Tensor,
               reward: float) -> dict[str, float]:
        return {}  # nothing learnt: the next state's errors decide

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({"num_groups": self.num_groups})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_groups"] != self.num_groups:
            raise ValueError(f"hardness state has num_groups={state['num_groups']}, this "
                             f"sampler {self.num_groups}")


__all__ = ["Exp3S", "Hardness", "REWARD_QUANTILES"]
