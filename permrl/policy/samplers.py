"""Permutation samplers behind one small interface.

A sampler answers one question per training batch: which row of Psi goes with each sample?
`UniformSampler` is the jigsaw baseline (every permutation equally likely). `GroupSampler` runs
the learned policy of Sect. 3.2: a group of permutations is drawn from pi(. | s_hat), then a
permutation uniformly inside it (then a random training sample: the batch itself). It also keeps
what the policy needs between validations: the groups, s_hat, the error history and the actions
of the running episode. The same sampler runs the adaptive baselines (`Exp3S`, `Hardness`):
only the learner that turns s_hat into group probabilities differs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
import torch

from permrl.policy.groups import (
    PermutationGroups,
    difficulty_quartiles,
    group_errors,
    group_permutations,
    hardest_first,
    policy_input,
)
from permrl.policy.reinforce import extrapolated_error, reward
from permrl.policy.state import NetworkState


class PermutationSampler(Protocol):
    """What the loop asks every sampler: a permutation per sample, and is an episode running."""

    in_episode: bool

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(batch_size,) int64 indices into Psi."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CycleSampler(PermutationSampler, Protocol):
    """A sampler that runs the cycle of Sect. 3.2 (`GroupSampler`, `HardestShareSampler`), in
    the order `permrl.train.policy_step` calls it; `iteration` counts SGD iterations done."""

    updates: int  # the episodes it learnt from (the "episode" of its log records)

    def record(self, perms: torch.Tensor) -> None: ...  # what an episode batch trained on

    def begin_episode(self) -> None: ...

    def reward(self, iteration: int, state: NetworkState,
               twin: NetworkState | None = None) -> float | None: ...  # Eq. 7

    def episode_record(self, iteration: int, state: NetworkState,
                       twin: NetworkState | None = None) -> dict[str, Any]: ...

    def update(self, r: float) -> dict[str, Any]: ...  # Eq. 9

    def end_episode(self) -> None: ...

    def regroup(self, iteration: int, state: NetworkState) -> None: ...  # Eq. 10


class UniformSampler:
    """psi ~ Uniform(Psi), independent of the sample (the baseline of Noroozi & Favaro)."""

    in_episode = False  # it never runs episodes

    def __init__(self, num_permutations: int) -> None:
        self.num_permutations = num_permutations

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_permutations, (batch_size,), generator=generator)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "uniform", "num_permutations": self.num_permutations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_permutations = int(state["num_permutations"])


EPISODE_ACTIONS = ("sample", "batch", "episode")  # an episode's group: drawn per sample, per
# mini-batch, or once for the whole episode
REWARD_METRICS = ("error", "cross_entropy", "log_ratio")
REWARD_BASELINES = ("extrapolated", "twin")  # Eq. 7's E_BL, or a paired uniform twin


def reward_value(state: NetworkState, metric: str) -> float:
    """The quantity whose extrapolated trend Eq. 7 compares with, lower = better: the 0/1
    error of Eq. 6 (the paper's), the mean cross-entropy, or minus the mean log softmax ratio
    (Eq. 3), each over all |Psi| x |X_val| pairs and from the same logits as the state."""
    if metric == "error":
        return state.error
    if metric == "cross_entropy":
        assert state.cross_entropy is not None, "this state has no cross-entropy"
        return state.cross_entropy.double().mean().item()
    return -state.ratios.double().log().mean().item()


class GroupLearner(Protocol):
    """What chooses among the groups: `Reinforce` (the paper), `Exp3S` or `Hardness`."""

    kind: str

    def probabilities(self, s_hat: torch.Tensor, mask: torch.Tensor | None,
                      group_errors: torch.Tensor | None = None) -> torch.Tensor: ...

    def update(self, s_hat: torch.Tensor, mask: torch.Tensor | None, actions: torch.Tensor,
               reward: float) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class GroupSampler:
    """Draws permutations from a learner over groups of Psi: the REINFORCE policy of Sect. 3.2,
    or one of the simple adaptive baselines of `permrl.policy.bandits`.

    Until the first state exists every permutation is one group and the draw is uniform.
    `episode_actions`: inside an episode, a group is drawn for every sample ("sample", the design's
    reading of Sect. 3.2: K x B actions), one group for each of the K mini-batches ("batch":
    K actions, each a whole mini-batch; the episode's draws then deviate from pi far more, which
    is what the reward can be credited to), or one group for the whole episode ("episode": the
    episode trains on that group alone). The SGD phase always draws per sample.
    The cycle, in the order `permrl.train.policy_step` calls it: `regroup(iteration, state)`
    re-clusters Psi on a new state and fixes s_hat (Eq. 10; the learner is fixed in between);
    `begin_episode()`; the loop `record`s the permutations each of the K mini-batches trained
    on; then from the state after them `reward` (Eq. 7), `episode_record`, `update` (Eq. 9),
    `end_episode()`, and `regroup` again.
    `reward_metric`: what the reward compares, `reward_value` (the paper: "error").
    `reward_baseline`: what the episode's value is compared with: "extrapolated", Eq. 7's E_BL
    (the paper's), or "twin", the value of a paired twin forked at the episode's start and
    trained on uniform draws of the same batches (`permrl.policy.twin`), passed to
    `reward`: r = value(twin) - value(policy), positive when the episode beat uniform.

    >>> from permrl.policy.reinforce import Reinforce
    >>> from permrl.policy.state import NetworkState
    >>> sampler = GroupSampler(6, Reinforce(num_groups=2, seed=0), num_groups=2, seed=0)
    >>> gen = torch.Generator().manual_seed(0)
    >>> sampler.draw(4, gen)  # uniform over Psi until the first state
    tensor([2, 3, 5, 0])
    >>> ratios = torch.tensor([[.6, .7], [.6, .6], [.7, .6], [1.8, 1.9], [1.7, 2.], [1.9, 1.8]])
    >>> predicted = torch.tensor([[1, 1], [0, 0], [0, 0], [3, 4], [4, 4], [5, 5]])
    >>> sampler.regroup(100, NetworkState.from_matrices(ratios, predicted))  # Eq. 10
    >>> sampler.groups.assignment.tolist()  # group 0: the three hard permutations
    [0, 0, 0, 1, 1, 1]
    >>> sampler.begin_episode()
    >>> perms = sampler.draw(8, gen)  # a group from pi(. | s_hat), a permutation inside it
    >>> sampler.record(perms)  # what the episode trained on: its actions for Eq. 9
    """

    def __init__(self, num_permutations: int, learner: GroupLearner, num_groups: int,
                 seed: int, episode_actions: str = "sample", reward_metric: str = "error",
                 reward_baseline: str = "extrapolated") -> None:
        if episode_actions not in EPISODE_ACTIONS:
            raise ValueError(f"episode_actions must be one of {EPISODE_ACTIONS}, got "
                             f"{episode_actions!r}")
        if reward_metric not in REWARD_METRICS:
            raise ValueError(f"reward_metric must be one of {REWARD_METRICS}, got "
                             f"{reward_metric!r}")
        if reward_baseline not in REWARD_BASELINES:
            raise ValueError(f"reward_baseline must be one of {REWARD_BASELINES}, got "
                             f"{reward_baseline!r}")
        self.reward_metric, self.reward_baseline = reward_metric, reward_baseline
        self.values: list[tuple[int, float]] = []  # (iteration, reward_value) per validation
        self.num_permutations, self.learner = num_permutations, learner
        self.episode_actions = episode_actions
        self.num_groups, self.seed = num_groups, seed
        self.groups: PermutationGroups | None = None
        self.s_hat: torch.Tensor | None = None
        self.group_errors: torch.Tensor | None = None  # (|C|,) mean validation error per group
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
        return self.learner.probabilities(self.s_hat, self.mask(), self.group_errors)

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(batch_size,) permutation indices: a group from pi(. | s_hat) (per sample, per
        mini-batch or per episode, `episode_actions`), then a permutation uniformly inside it.
        Nothing is recorded here: the loop hands what the episode trained on to `record`."""
        if self.groups is None or self.s_hat is None:
            return torch.randint(0, self.num_permutations, (batch_size,), generator=generator)
        one_per_batch = self.episode is not None and self.episode_actions != "sample"
        if self.episode_actions == "episode" and (chosen := self.episode_group()) is not None:
            actions = chosen  # the episode's one group, kept
        else:
            actions = torch.multinomial(self.probabilities(), 1 if one_per_batch else batch_size,
                                        replacement=True, generator=generator)
        actions = actions.expand(batch_size).contiguous() if one_per_batch else actions
        # A permutation uniformly inside each chosen group.
        sizes = torch.as_tensor(self.groups.sizes)[actions]
        offsets = (torch.rand(batch_size, generator=generator) * sizes).long()
        order = torch.as_tensor(np.argsort(self.groups.assignment, kind="stable"))
        starts = torch.as_tensor(np.concatenate([[0], np.cumsum(self.groups.sizes)[:-1]]))
        return order[starts[actions] + offsets]

    @property
    def in_episode(self) -> bool:
        """Between `begin_episode` and `end_episode`: the draws are the episode's actions."""
        return self.episode is not None

    def record(self, perms: torch.Tensor) -> None:
        """The permutations the running episode trained on (an unreadable sample's draw is
        left out by the caller: it earns no credit in Eq. 9); their groups are its actions."""
        assert self.episode is not None and self.groups is not None, "no episode is running"
        self.episode_perms.append(perms)
        self.episode.append(torch.as_tensor(self.groups.assignment)[perms])

    def episode_group(self) -> torch.Tensor | None:
        """(1,) the group the running episode drew first (None before any trained draw)."""
        return next((a[:1] for a in self.episode or [] if len(a)), None)

    # Validation, episodes, updates --------------------------------------------------------
    def regroup(self, iteration: int, state: NetworkState) -> None:
        """A new state s_t: regroup Psi (k-means, hardest first) and set s_hat (Eq. 10)."""
        self.errors.append((iteration, state.error))
        self.values.append((iteration, reward_value(state, self.reward_metric)))
        ratios = state.ratios.cpu().numpy()
        errors = state.per_permutation_error.cpu().numpy()
        self.groups = group_permutations(ratios, self.num_groups, self.seed + len(self.errors))
        self.s_hat = policy_input(self.groups, self.num_permutations)
        self.group_errors = torch.as_tensor(group_errors(self.groups, errors))
        self.quartiles = difficulty_quartiles(errors, ratios.mean(axis=1))

    observe = regroup  # permrl 0.2's name, kept for one version

    def begin_episode(self) -> None:
        self.episode, self.episode_perms = [], []

    def reward(self, iteration: int, state: NetworkState,
               twin: NetworkState | None = None) -> float | None:
        """r of the finished episode from the state s_{t+1} after it: Eq. 7 (E_BL - E_{t+1},
        None until two states exist), or value(twin) - value(policy) against the paired
        `twin`'s state; both on `reward_metric`."""
        value = reward_value(state, self.reward_metric)
        if self.reward_baseline == "twin":
            assert twin is not None, "reward_baseline=twin: the reward needs the twin's state"
            return reward_value(twin, self.reward_metric) - value
        return reward(self.values, iteration, value)  # Eq. 7

    def update(self, r: float) -> dict[str, Any]:
        """The learner's step on the episode's actions and reward r (Eq. 9 for the policy)."""
        assert self.episode is not None and self.s_hat is not None, "no episode is running"
        self.updates += 1
        return self.learner.update(self.s_hat, self.mask(), torch.cat(self.episode), r)

    def end_episode(self) -> None:
        self.episode = None

    def episode_record(self, iteration: int, state: NetworkState,
                       twin: NetworkState | None = None) -> dict[str, Any]:
        """What the finished episode saw and chose, before the update and the regrouping."""
        assert self.episode is not None and self.groups is not None and self.s_hat is not None
        actions = torch.cat(self.episode)
        perms = torch.cat(self.episode_perms)
        record: dict[str, Any] = {
            "sampler": self.learner.kind,
            "group_sizes": self.groups.sizes.tolist(),
            "group_medians": [round(float(m), 5) for m in self.groups.medians],
            "group_errors": [round(float(e), 5) for e in self.group_errors],
            "policy_probs": [round(float(p), 5) for p in self.probabilities()],
            "chosen_groups": np.bincount(actions.numpy(), minlength=self.num_groups).tolist(),
            "chosen_quartiles": np.bincount(self.quartiles[perms.numpy()],
                                            minlength=4).tolist(),
            "error_before": self.errors[-1][1],
            "error_after": state.error,
            "extrapolated_error": extrapolated_error(self.errors, iteration),
        }
        if self.reward_metric != "error":  # what the reward compared instead
            record |= {"reward_metric": self.reward_metric, "value_before": self.values[-1][1],
                       "value_after": reward_value(state, self.reward_metric)}
        if self.reward_baseline == "twin":
            assert twin is not None, "reward_baseline=twin: the record needs the twin's state"
            record |= {"reward_baseline": "twin",
                       "twin_value": reward_value(twin, self.reward_metric)}
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.learner.kind, "learner": self.learner.state_dict(),
                "groups": dataclasses.asdict(self.groups) if self.groups else None,
                "s_hat": self.s_hat, "group_errors": self.group_errors,
                "errors": list(self.errors), "values": list(self.values),
                "reward_metric": self.reward_metric, "reward_baseline": self.reward_baseline,
                "quartiles": self.quartiles,
                "updates": self.updates, "episode": self.episode,
                "episode_perms": self.episode_perms}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.learner.kind:
            raise ValueError(f"sampler state is {state['kind']!r}, this run uses "
                             f"{self.learner.kind!r}")
        self.learner.load_state_dict(state["learner"])
        groups = state["groups"]
        self.groups = PermutationGroups(**groups) if isinstance(groups, dict) else groups
        self.s_hat = state["s_hat"]
        self.group_errors = state["group_errors"]
        metric = state.get("reward_metric", "error")  # (permrl <= 0.2: the error)
        if metric != self.reward_metric:
            raise ValueError(f"sampler state rewards {metric!r}, this run "
                             f"{self.reward_metric!r}")
        baseline = state.get("reward_baseline", "extrapolated")  # (permrl <= 0.2: Eq. 7's)
        if baseline != self.reward_baseline:
            raise ValueError(f"sampler state's reward baseline is {baseline!r}, this run's "
                             f"{self.reward_baseline!r}")
        self.errors, self.quartiles = list(state["errors"]), state["quartiles"]
        self.values = list(state.get("values", self.errors))
        self.updates = state["updates"]
        self.episode, self.episode_perms = state["episode"], state["episode_perms"]


PolicySampler = GroupSampler  # permrl 0.2's name, kept for one version


class HardestShareSampler:
    """`policy: fixed`, the ceiling arm of the ablation (not in the paper): every draw uniform
    over the hardest `share` of Psi by the per-permutation validation error of the last state
    (at share 0.5 the landscape's "hardest half"), chosen anew at every state of the policy's
    schedule (N SGD steps, then K). Nothing is learnt: it asks whether any choice of
    permutations beats uniform downstream at a given scale. Before the first state: uniform."""

    kind = "fixed"

    def __init__(self, num_permutations: int, share: float) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.num_permutations, self.share = num_permutations, share
        self.chosen: torch.Tensor | None = None  # indices into Psi drawn from
        self.errors: list[tuple[int, float]] = []
        self.episode: list[torch.Tensor] | None = None
        self.updates = 0

    def draw(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        if self.chosen is None:
            return torch.randint(0, self.num_permutations, (batch_size,), generator=generator)
        return self.chosen[torch.randint(0, len(self.chosen), (batch_size,), generator=generator)]

    def regroup(self, iteration: int, state: NetworkState) -> None:
        """A new state: the hardest `share` of Psi by its per-permutation error."""
        self.errors.append((iteration, state.error))
        count = max(1, round(self.share * self.num_permutations))
        order = hardest_first(state.per_permutation_error.cpu().numpy())
        self.chosen = torch.as_tensor(np.sort(order[:count]))

    observe = regroup  # permrl 0.2's name, kept for one version

    def begin_episode(self) -> None:
        self.episode = []

    @property
    def in_episode(self) -> bool:
        return self.episode is not None

    def record(self, perms: torch.Tensor) -> None:
        """Nothing is learnt from what an episode drew."""

    def reward(self, iteration: int, state: NetworkState,
               twin: NetworkState | None = None) -> float | None:
        return None  # nothing is learnt

    def update(self, r: float) -> dict[str, Any]:
        return {}  # (never called: there is no reward)

    def end_episode(self) -> None:
        self.episode = None
        self.updates += 1  # episodes counted (the policy counts its updates)

    def episode_record(self, iteration: int, state: NetworkState,
                       twin: NetworkState | None = None) -> dict[str, Any]:
        """The cycle's record: no reward, nothing learnt."""
        return {"sampler": self.kind, "share": self.share,
                "error_before": self.errors[-1][1], "error_after": state.error}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "share": self.share, "chosen": self.chosen,
                "errors": list(self.errors), "episode": self.episode, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind or state["share"] != self.share:
            raise ValueError(f"sampler state is {state['kind']!r} (share {state.get('share')}), "
                             f"this run {self.kind!r} (share {self.share})")
        self.chosen, self.errors = state["chosen"], list(state["errors"])
        self.episode, self.updates = state["episode"], state["updates"]
