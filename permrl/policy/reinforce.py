"""Reward (Eq. 7) and the REINFORCE policy over groups of permutations (Eq. 8, 9; design §5).

Loss of one episode t with K actions a_k drawn from pi(.|s_hat_t), minimised by a plain
gradient step (Eq. 9: theta <- theta + alpha * R * grad log pi):
    loss = -A_t * mean_k log pi(a_k | s_hat_t) - beta * reg(pi(.|s_hat_t)),
R_t = sum_{i < horizon} gamma^i r_{t+i} (Eq. 9, truncated), b a moving average of past returns.

Two forms (docs/design.md has the measurements behind the defaults):
- As the paper writes it (`advantage="raw", prior="groups"`): A_t = R_t - b, reg = H(pi) over
  the groups. At the reward scale of a real run (|r| ~ 1e-3) the entropy term outweighs the
  return term and the policy cannot move; and its maximum-entropy point is uniform over *groups*,
  which over-samples the small (usually easy) k-means groups.
- The default (`advantage="normalised", prior="psi"`): A_t = (R_t - b) / sigma_t, sigma_t the
  running spread of the returns (scale-free); log(|c_j| / |Psi|) added to the logits so the
  untrained policy draws every permutation of Psi equally often; reg = -KL(q || pi), q the
  uniform-over-Psi group shares: zero at the start, and its gradient pi - q never vanishes, so
  no group is starved (the reverse KL, like the entropy, stops pulling once pi_j ~ 0).

Decisions:
- Baseline: the first advantage is taken against b = 0 (a reward is an improvement over the
  error trend, zero when the policy has no effect); the first return then initialises b, later
  ones update it as b <- m b + (1 - m) R. The spread sigma^2 <- m sigma^2 + (1 - m)(R - b)^2
  includes the current return, so |A| <= 1 / sqrt(1 - m).
- gamma > 0: episode t is updated once the rewards of episodes t..t+horizon-1 exist, with the
  policy's parameters at that time (a delayed REINFORCE step); the last horizon-1 episodes of a
  run are never credited. gamma = 0 (default) updates at once with R_t = r_t.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical


def extrapolated_error(history: Sequence[tuple[int, float]], iteration: int) -> float | None:
    """E_BL at `iteration`: the line through the last two (iteration, error) validations.

    E_BL = E_t + (E_t - E_prev) * (iteration - i_t) / (i_t - i_prev); with evenly spaced
    validations this is the paper's 2 E_t - E_{t-1} (Eq. 7). None until two errors exist.

    >>> round(extrapolated_error([(10, 0.8), (20, 0.6)], 25), 6)  # the trend, 5 steps on
    0.5
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
    """Eq. 7: r_t = E_BL - E_{t+1}; `error_after` is E_{t+1}, measured at `iteration`.

    >>> round(reward([(10, 0.8), (20, 0.6)], 25, error_after=0.45), 6)  # beat the trend
    0.05
    """
    baseline = extrapolated_error(history, iteration)
    return None if baseline is None else baseline - error_after


def _entropy(probs: Tensor, logp: Tensor) -> Tensor:
    """H(pi) over the groups with probability > 0 (masked log-probabilities are -inf)."""
    return -(probs * logp.masked_fill(probs == 0, 0.0)).sum(-1)


def group_prior(s_hat: Tensor, mask: Tensor | None = None) -> Tensor:
    """q_j = |c_j| / |Psi|, read from s_hat (Eq. 10): the group shares of uniform draws over Psi,
    renormalised over the groups `mask` allows (all by default)."""
    sizes = s_hat[0::2] if mask is None else s_hat[0::2] * torch.as_tensor(mask, dtype=s_hat.dtype)
    return sizes / sizes.sum()


INIT_SCALE = 0.01  # output layer of an untrained policy: logits within ~1e-2 of the prior


class Policy(nn.Module):
    """pi(c | s_hat): MLP 2|C| -> hidden -> |C| with ReLU, softmax over the groups (Eq. 8).

    `prior=True` adds log q_j = log(|c_j| / |Psi|) to the logits: an untrained policy (net
    output ~ constant) then draws every permutation of Psi equally often, as the paper says of
    its untrained policy, instead of every *group* equally often (k-means groups are unequal).
    """

    def __init__(self, num_groups: int, hidden: int = 16, prior: bool = True) -> None:
        super().__init__()
        self.num_groups, self.prior = num_groups, prior
        self.net = nn.Sequential(
            nn.Linear(2 * num_groups, hidden), nn.ReLU(), nn.Linear(hidden, num_groups)
        )
        if prior:  # a near-zero output layer: the untrained policy is (almost) the prior
            with torch.no_grad():
                self.net[-1].weight.mul_(INIT_SCALE)
                self.net[-1].bias.zero_()

    def forward(self, s_hat: Tensor) -> Tensor:
        logits = self.net(s_hat)
        if self.prior:
            logits = logits + torch.log(group_prior(s_hat))  # -inf for empty groups
        return logits

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


ADVANTAGES = ("normalised", "raw")
PRIORS = ("psi", "groups")
OPTIMIZERS = ("sgd", "adam")


class Reinforce:
    """REINFORCE (Eq. 9) with a moving-average baseline and an entropy / KL regulariser.

    The interface every learner over groups has (`GroupSampler` calls it): `probabilities`,
    `update(s_hat, mask, actions, reward)`, `state_dict`, `load_state_dict`.

    advantage="raw", prior="groups": Eq. 9 as written (R_t - b, entropy over the groups).
    advantage="normalised" (default): (R_t - b) / sigma, sigma the running spread of the
    returns, so the update does not depend on the reward's unit (errors move by ~1e-3 per
    episode; a fixed entropy weight would otherwise dominate, see docs/design.md).
    prior="psi" (default): log q_j added to the logits (see `Policy`), and the regulariser is
    -KL(q || pi), zero at the uniform-over-Psi start, instead of H(pi).
    """

    kind = "reinforce"

    def __init__(
        self,
        num_groups: int,
        hidden: int = 16,
        lr: float = 1.0,
        entropy_weight: float = 0.01,
        baseline_momentum: float = 0.9,
        gamma: float = 0.0,
        horizon: int = 1,
        advantage: str = "normalised",
        prior: str = "psi",
        optimizer: str = "sgd",
        seed: int = 0,
    ) -> None:
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if advantage not in ADVANTAGES or prior not in PRIORS or optimizer not in OPTIMIZERS:
            raise ValueError(f"advantage must be one of {ADVANTAGES}, prior one of {PRIORS}, "
                             f"optimizer one of {OPTIMIZERS}; got {advantage!r}, {prior!r}, "
                             f"{optimizer!r}")
        self.num_groups, self.hidden = num_groups, hidden
        self.entropy_weight, self.baseline_momentum = entropy_weight, baseline_momentum
        self.gamma, self.horizon = gamma, horizon
        self.advantage, self.prior = advantage, prior
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG left untouched
            torch.manual_seed(seed)
            self.policy = Policy(num_groups, hidden, prior=prior == "psi")
        params = self.policy.parameters()  # Eq. 9 is a plain gradient step with rate alpha
        self.optimizer = (torch.optim.SGD(params, lr=lr) if optimizer == "sgd"
                          else torch.optim.Adam(params, lr=lr))
        self.optimizer_name = optimizer
        self.baseline: float | None = None
        self.spread: float | None = None  # running mean of (R - b)^2 (normalised advantages)
        self.pending: list[dict[str, Any]] = []  # episodes waiting for later rewards
        self.episodes = 0  # episodes seen by `update`

    @property
    def delay(self) -> int:
        """Episodes whose rewards R_t needs: 1 when gamma = 0."""
        return 1 if self.gamma == 0.0 else self.horizon

    @torch.no_grad()
    def probabilities(self, s_hat: Tensor, mask: Tensor | None,
                      group_errors: Tensor | None = None) -> Tensor:
        """pi(. | s_hat) over the groups (`group_errors` is not part of the policy's input)."""
        s, m = _as_input(s_hat, mask)
        return self.policy.distribution(s, m).probs

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

    def _advantage(self, ret: float) -> tuple[float, float]:
        """(advantage, baseline b used); updates b and the spread after using them."""
        baseline = 0.0 if self.baseline is None else self.baseline
        deviation = ret - baseline
        m = self.baseline_momentum
        self.spread = deviation**2 if self.spread is None else \
            m * self.spread + (1 - m) * deviation**2  # includes this return: |A| <= 1/sqrt(1-m)
        self.baseline = ret if self.baseline is None else m * self.baseline + (1 - m) * ret
        if self.advantage == "raw":
            return deviation, baseline
        return (deviation / math.sqrt(self.spread) if self.spread > 0 else 0.0), baseline

    def _step(self, episode: dict[str, Any], ret: float) -> dict[str, float]:
        advantage, baseline = self._advantage(ret)
        dist = self.policy.distribution(episode["s_hat"], episode["mask"])
        log_prob = dist.log_prob(episode["actions"]).mean()
        logp = torch.log_softmax(dist.logits, -1)
        entropy = _entropy(dist.probs, logp)
        if self.prior == "groups":  # Eq. 9: entropy bonus over the groups
            regulariser = entropy
            kl = None
        else:  # -KL(q || pi), q = uniform over Psi seen through the groups
            q = group_prior(episode["s_hat"], episode["mask"])  # over the groups drawn from
            ok = q > 0
            kl = (q[ok] * (torch.log(q[ok]) - logp[ok])).sum()
            regulariser = -kl
        loss = -advantage * log_prob - self.entropy_weight * regulariser
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        stats = {"loss": loss.item(), "advantage": advantage, "baseline": baseline,
                 "entropy": entropy.item(), "return": ret, "updated_episode": episode["episode"]}
        if kl is not None:
            stats["kl_to_prior"] = kl.item()
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Policy, optimizer, baseline and pending episodes (a copy: later steps leave it be)."""
        return copy.deepcopy({
            "num_groups": self.num_groups, "hidden": self.hidden, "gamma": self.gamma,
            "horizon": self.horizon, "advantage": self.advantage, "prior": self.prior,
            "optimizer_name": self.optimizer_name,
            "policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline, "spread": self.spread, "pending": self.pending,
            "episodes": self.episodes,
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("num_groups", "hidden", "gamma", "horizon", "advantage", "prior",
                    "optimizer_name"):
            if state[key] != getattr(self, key):
                raise ValueError(f"policy state has {key}={state[key]}, "
                                 f"this policy {getattr(self, key)}")
        state = copy.deepcopy(state)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline, self.spread = state["baseline"], state["spread"]
        self.pending = state["pending"]
        self.episodes = state["episodes"]
