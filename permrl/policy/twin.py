"""The paired twin: a baseline for an episode's reward that shares the episode's start and data.

Eq. 7 compares E_{t+1} with a line through the errors before the episode, so its noise is that
of two validations plus the trend's (design §5, "The reward landscape": ~2x the replicate
spread of the same K steps). A paired twin (`cycle.reward_baseline: twin`) removes most of
it: at the episode's start the network and its optimiser are forked; every episode step trains
the twin on the same samples, crops and dropout masks as the network, with its permutations
drawn uniformly over Psi; at the episode's end the reward is value(twin) - value(network)
(`GroupSampler.reward`): positive when the policy's draws did better than uniform ones
from the same start on the same data. Cost: K more SGD steps and one more state per episode,
and a second copy of the weights and optimiser moments while an episode runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from permrl.bookkeeping import all_finite


class PairedTwin:
    """A fork of `model` and `optimizer` (deep copies: the originals are never touched)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():  # (the network's last gradients are not the twin's)
            p.grad = None
        twin_of = {id(p): q for p, q in zip(model.parameters(), self.model.parameters(),
                                            strict=True)}
        groups = [{k: v for k, v in g.items() if k != "params"}
                  | {"params": [twin_of[id(p)] for p in g["params"]]}
                  for g in optimizer.param_groups]
        self.optimizer = type(optimizer)(groups)
        self.optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        self.skipped = 0  # twin steps refused for a non-finite loss or gradient

    def step(self, loss_of: Callable[[nn.Module], torch.Tensor], lrs: list[float],
             average_gradients: Callable[[nn.Module], None] | None = None) -> None:
        """One SGD step of the twin at the network's learning rates `lrs` (one per parameter
        group); `loss_of(model)` is the step's loss of the twin's uniform draws;
        `average_gradients(model)`, under torchrun, averages its gradients over the processes
        (as DDP does the network's). A non-finite step is skipped (the network's own guard
        decides for the network)."""
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        loss = loss_of(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if average_gradients is not None:
            average_gradients(self.model)
        if bool(all_finite(loss, self.model)):
            self.optimizer.step()
        else:
            self.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint taken mid-episode keeps, so that a resumed run is exact."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.skipped = int(state["skipped"])


__all__ = ["PairedTwin"]
