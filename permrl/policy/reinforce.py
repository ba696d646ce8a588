"""Reward (Eq. 7) and the REINFORCE policy over groups of permutations (Eq. 8, 9; SPEC 5).

Loss of one episode t with K actions a_k drawn from pi(.|s_hat_t):
    loss = -(R_t - b) * mean_k log pi(a_k | s_hat_t) - beta * H(pi(.|s_hat_t)),
R_t = sum_{i < horizon} gamma^i r_{t+i} (Eq. 9, truncated), b a moving average of past returns.

Decisions:
- Baseline: the first advantage is taken against b = 0 (a reward is an improvement over the
  error trend, zero when the policy has no effect); the first return then initialises b, later
  ones update it as b <- m b + (1 - m) R, always after the advantage is computed.
- gamma > 0: episode t is updated once the rewards of episodes t..t+horizon-1 exist, with the
  policy's parameters at that time (a delayed REINFORCE step); the last horizon-1 episodes of a
  run are never credited. gamma = 0 (default) updates at once with R_t = r_t.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical


def extrapolated_error(history: Sequence[tuple[int, float]], iteration: int) -> float | None:
    """E_BL at `iteration`: the line through the last two (iteration, error) validations.

    E_BL = E_t + (E_t - E_prev) * (iteration - i_t) / (i_t - i_prev); with evenly spaced
    validations this is the paper's 2 E_t - E_{t-1} (Eq. 7). None until two errors exist.
    """
    if len(history) < 2:
        return None
    (i_prev, e_prev), (i_t, e_t) = history[-2], history[-1]
    if i_t == i_prev:
        raise ValueError(f"two validations at the same iteration {i_t}")
    return e_t + (e_t - e_prev) * (iteration - i_t) / (i_t - i_prev)


def reward(
    history: Sequence[tuple[int, float]], iteration: int, error_after: float
) -> float | None:
    """Eq. 7: r_t = E_BL - E_{t+1}; `error_after` is E_{t+1}, measured at `iteration`."""
    baseline = extrapolated_error(history, iteration)
    return None if baseline is None else baseline - error_after


def _entropy(dist: Categorical, mask: Tensor | None) -> Tensor:
    """H(pi) summed over the allowed groups only (masked log-probabilities are -inf)."""
    logp = dist.logits if mask is None else dist.logits.masked_fill(~mask, 0.0)
    return -(dist.probs * logp).sum(-1)


class Policy(nn.Module):
    """pi(c | s_hat): MLP 2|C| -> hidden -> |C| with ReLU, softmax over the groups (Eq. 8)."""

    def __init__(self, num_groups: int, hidden: int = 16) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.net = nn.Sequential(
            nn.Linear(2 * num_groups, hidden), nn.ReLU(), nn.Linear(hidden, num_groups)
        )

    def forward(self, s_hat: Tensor) -> Tensor:
        return self.net(s_hat)

    def distribution(self, s_hat: Tensor, mask: Tensor | None = None) -> Categorical:
        """Categorical over groups; groups where `mask` is False (size 0) get -inf logits."""
        logits = self(s_hat)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return Categorical(logits=logits)


def _as_input(s_hat: Any, mask: Any) -> tuple[Tensor, Tensor | None]:
    s = torch.as_tensor(s_hat, dtype=torch.float32)
    m = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    return s, m


class Reinforce:
    """REINFORCE (Eq. 9) with a moving-average baseline and an entropy bonus (SPEC 5)."""

    def __init__(
        self,
        num_groups: int,
        hidden: int = 16,
        lr: float = 1e-3,
        entropy_weight: float = 0.01,
        baseline_momentum: float = 0.9,
        gamma: float = 0.0,
        horizon: int = 1,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.num_groups, self.hidden = num_groups, hidden
        self.entropy_weight, self.baseline_momentum = entropy_weight, baseline_momentum
        self.gamma, self.horizon = gamma, horizon
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG left untouched
            torch.manual_seed(seed)
            self.policy = Policy(num_groups, hidden)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.baseline: float | None = None
        self.pending: list[dict[str, Any]] = []  # episodes waiting for later rewards
        self.episodes = 0  # episodes seen by `update`

    @property
    def delay(self) -> int:
        """Episodes whose rewards R_t needs: 1 when gamma = 0."""
        return 1 if self.gamma == 0.0 else self.horizon

    @torch.no_grad()
    def act(
        self, s_hat: Tensor, mask: Tensor | None, count: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Draw `count` groups from pi(.|s_hat) with replacement: (actions (count,), probs)."""
        s, m = _as_input(s_hat, mask)
        probs = self.policy.distribution(s, m).probs
        actions = torch.multinomial(probs, count, replacement=True, generator=generator)
        return actions, probs

    def update(
        self, s_hat: Tensor, mask: Tensor | None, actions: Tensor, reward: float
    ) -> dict[str, float]:
        """Record episode (s_hat, actions, r_t); step pi on the episode that became complete.

        Returns the stats of that episode ({} while it still waits for later rewards).
        """
        s, m = _as_input(s_hat, mask)
        self.pending.append({"s_hat": s, "mask": m, "actions": torch.as_tensor(actions).long(),
                             "reward": float(reward), "episode": self.episodes})
        self.episodes += 1
        if len(self.pending) < self.delay:
            return {}
        ret = sum(self.gamma**i * ep["reward"] for i, ep in enumerate(self.pending))  # Eq. 9
        episode = self.pending.pop(0)
        return self._step(episode, ret)

    def _step(self, episode: dict[str, Any], ret: float) -> dict[str, float]:
        baseline = 0.0 if self.baseline is None else self.baseline
        advantage = ret - baseline
        dist = self.policy.distribution(episode["s_hat"], episode["mask"])
        log_prob = dist.log_prob(episode["actions"]).mean()
        entropy = _entropy(dist, episode["mask"])
        loss = -advantage * log_prob - self.entropy_weight * entropy
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        m = self.baseline_momentum
        self.baseline = ret if self.baseline is None else m * self.baseline + (1 - m) * ret
        return {"loss": loss.item(), "advantage": advantage, "baseline": baseline,
                "entropy": entropy.item(), "return": ret, "updated_episode": episode["episode"]}

    def state_dict(self) -> dict[str, Any]:
        """Policy, optimizer, baseline and pending episodes (a copy: later steps leave it be)."""
        return copy.deepcopy({
            "num_groups": self.num_groups, "hidden": self.hidden, "gamma": self.gamma,
            "horizon": self.horizon, "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(), "baseline": self.baseline,
            "pending": self.pending, "episodes": self.episodes,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("num_groups", "hidden", "gamma", "horizon"):
            if state[key] != getattr(self, key):
                raise ValueError(f"policy state has {key}={state[key]}, "
                                 f"this policy {getattr(self, key)}")
        state = copy.deepcopy(state)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.pending = state["pending"]
        self.episodes = state["episodes"]
