"""The reward landscape: can any permutation policy learn here? (design §5, "The landscape")

From a checkpoint (weights, BatchNorm statistics, optimiser state; the learning rate held
constant), its state s on X_val (Eq. 3, 4) and its k-means groups, every *arm* (a distribution
over Psi) trains K steps, for R replicates; before each arm the checkpoint is restored. Within
a replicate every arm sees the same batches, crops, jitter and dropout masks, and draws its
permutations by inverse transform from the same uniforms (common random numbers), so two arms
differ only where their distributions differ. The arms:
- `uniform`: uniform over Psi (what an untrained policy draws);
- `group j`: uniform inside the j-th hardest group alone; `tilt j`: half the draws uniform over
  Psi, half from group j (what a policy that starts at uniform can move towards);
- `hardest half` / `easiest half` of Psi by validation error (equal shares of Psi);
- controls: `lr=0` (uniform draws, only the BatchNorm statistics move) and `fixed` (always
  psi_0: the classifier collapses onto it, a positive control of the measurement).
After each horizon K the gain of three metrics over all |Psi| x |X_val| pairs is recorded
(positive = better): the 0/1 error (Eq. 6, its decrease), the mean cross-entropy (its
decrease) and the mean log softmax ratio (Eq. 3, its increase), with the stored BatchNorm
statistics and with statistics re-estimated on fixed uniform batches. `sigma_loop` is the
standard deviation of the Eq. 7 reward over ordinary cycles (N uniform steps, validate, K
steps, validate) from the same checkpoint: the noise a policy learning from Eq. 7 faces.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from permrl.checkpoint import load_checkpoint
from permrl.config import Config, ConfigError, config_with, model_tasks
from permrl.data.batches import step_seed
from permrl.data.samples import shuffle_tiles
from permrl.distributed import resolve_device
from permrl.models.build import build_model
from permrl.models.heads import OrderingNet
from permrl.policy.groups import PermutationGroups, group_permutations, hardest_first
from permrl.policy.reinforce import reward
from permrl.policy.samplers import REWARD_METRICS, reward_value
from permrl.policy.state import NetworkState, compute_state
from permrl.tasks import TaskData, prepare_task

METRICS = REWARD_METRICS  # as gains: -dE (Eq. 6), -dCE, +d mean log y_l
BN_VARIANTS = ("stored", "reestimated")
STREAM = 700  # random streams of the landscape (dropout, draws), apart from training's


@dataclass
class Arm:
    name: str
    probs: np.ndarray  # (|Psi|,) the distribution its permutations are drawn from
    kind: str  # uniform | group | tilt | half | control
    group: int | None = None  # the group of a `group` / `tilt` arm
    lr_scale: float = 1.0


def landscape_arms(groups: PermutationGroups, per_permutation_error: np.ndarray) -> list[Arm]:
    """The arms listed in the module docstring, for one clustering of Psi."""
    n = len(per_permutation_error)
    uniform = np.full(n, 1.0 / n)
    arms = [Arm("uniform", uniform, "uniform")]
    for j in np.flatnonzero(groups.sizes > 0):
        alone = (groups.assignment == j) / groups.sizes[j]
        arms.append(Arm(f"group {j}", alone, "group", int(j)))
        arms.append(Arm(f"tilt {j}", 0.5 * uniform + 0.5 * alone, "tilt", int(j)))
    order = hardest_first(per_permutation_error)
    hard = np.zeros(n)
    hard[order[: n // 2]] = 1.0 / (n // 2)
    easy = np.zeros(n)
    easy[order[n // 2:]] = 1.0 / (n - n // 2)
    fixed = np.zeros(n)
    fixed[0] = 1.0
    return arms + [Arm("hardest half", hard, "half"), Arm("easiest half", easy, "half"),
                   Arm("lr=0", uniform, "control", lr_scale=0.0),
                   Arm("fixed", fixed, "control")]


def inverse_transform(probs: np.ndarray, uniforms: torch.Tensor) -> torch.Tensor:
    """Indices into Psi with P(i) = probs[i], from shared U(0, 1) draws (common random
    numbers: arms with similar distributions draw similar permutations)."""
    cdf = torch.as_tensor(np.cumsum(probs) / np.sum(probs), dtype=torch.float64)
    index = torch.searchsorted(cdf, uniforms.double(), right=True)
    return index.clamp_max(len(probs) - 1)


def state_metrics(state: NetworkState) -> dict[str, float]:
    """The three metrics of a state, each over all |Psi| x |X_val| pairs (`reward_value`, the
    mean log ratio with its own sign: higher is better)."""
    return {"error": reward_value(state, "error"),
            "cross_entropy": reward_value(state, "cross_entropy"),
            "log_ratio": -reward_value(state, "log_ratio")}


def gains(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Improvement of each metric, positive = better."""
    return {"error": before["error"] - after["error"],
            "cross_entropy": before["cross_entropy"] - after["cross_entropy"],
            "log_ratio": after["log_ratio"] - before["log_ratio"]}


@dataclass
class Landscape:
    """A checkpoint's model and optimiser, restorable, with one task's data and Psi."""

    cfg: Config
    task: TaskData
    model: OrderingNet
    optimizer: torch.optim.Optimizer
    device: torch.device
    lr: float
    start_step: int
    seed: int
    snapshot: dict[str, Any] = field(default_factory=dict)
    cached_parts: dict[int, torch.Tensor | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.perms = torch.from_numpy(self.task.permutations).to(self.device)
        self.snapshot = {"model": copy.deepcopy(self.model.state_dict()),
                         "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def restore(self, lr_scale: float = 1.0) -> None:
        """Back to the checkpoint: weights, BN statistics, optimiser moments; lr held."""
        self.model.load_state_dict(self.snapshot["model"])
        self.optimizer.load_state_dict(copy.deepcopy(self.snapshot["optimizer"]))
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * lr_scale

    def parts(self, step: int) -> torch.Tensor | None:
        """The readable parts of a training step's batch (cached: every arm uses them)."""
        if step not in self.cached_parts:
            batch = self.task.batches[step]
            self.cached_parts[step] = self.task.batches.parts(batch, self.device)
        return self.cached_parts[step]

    def drawn_batch(self, step: int, probs: np.ndarray, stream: int
                    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The batch of `step` shuffled by permutations drawn from `probs` with the uniforms of
        (step, stream), and those permutations; the dropout masks of (step, stream) seeded.
        Every arm gets the same uniforms and masks (common random numbers)."""
        parts = self.parts(step)
        if parts is None:
            return None
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, STREAM + stream))
        target = inverse_transform(probs, torch.rand(parts.shape[0], generator=gen))
        target = target.to(self.device)
        torch.manual_seed(step_seed(self.seed, step, STREAM + stream + 1))  # dropout
        return shuffle_tiles(parts, self.perms, target), target

    def sgd_step(self, step: int, probs: np.ndarray, stream: int) -> None:
        """One SGD step on the batch of `step` (`drawn_batch`)."""
        drawn = self.drawn_batch(step, probs, stream)
        if drawn is None:
            return
        self.model.train()
        loss = F.cross_entropy(self.model.logits(self.task.name, drawn[0]).float(), drawn[1])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def state(self) -> NetworkState:
        return compute_state(self.model, self.task.name, self.task.val_parts, self.perms.cpu())

    def reestimated_state(self, bn_steps: list[int]) -> NetworkState:
        """The state with every BatchNorm's statistics re-estimated (cumulative average) on the
        batches of `bn_steps` under uniform draws; the model itself is left as it is."""
        saved = copy.deepcopy(self.model.state_dict())
        norms = [m for m in self.model.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        uniform = np.full(len(self.perms), 1.0 / len(self.perms))
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None
            self.model.train()
            with torch.no_grad():
                for step in bn_steps:
                    if (drawn := self.drawn_batch(step, uniform, stream=0)) is not None:
                        self.model.logits(self.task.name, drawn[0])
            return self.state()
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            self.model.load_state_dict(saved)

    def metrics(self, bn_steps: list[int]) -> dict[str, dict[str, float]]:
        """{bn variant: {metric: value}} of the model as it is now."""
        return {"stored": state_metrics(self.state()),
                "reestimated": state_metrics(self.reestimated_state(bn_steps))}


def open_landscape(checkpoint: str | Path, task: str | None, lr: float | None,
                   overrides: list[str], seed: int) -> Landscape:
    """The checkpoint's model, optimiser and the data of `task` (default: its first task)."""
    path = Path(checkpoint)
    ckpt = load_checkpoint(path / "checkpoint.pt" if path.is_dir() else path)
    cfg = config_with(ckpt["config"], overrides)
    names = model_tasks(cfg)
    task = task or names[0]
    if task not in names:
        raise ConfigError(f"--task: {task!r} is not one of this checkpoint's tasks {names}")
    from permrl.run import make_optimizer  # the optimiser exactly as training builds it

    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = prepare_task(cfg, task, ckpt["permutations"][task])
    model = build_model(cfg).to(device)
    model.load_state_dict(ckpt["model"])
    optimizer, _ = make_optimizer(cfg, model)
    optimizer.load_state_dict(ckpt["optimizer"])
    if lr is None:
        lr = ckpt["scheduler"]["_last_lr"][0] or cfg.train.lr  # (0 at a cosine's end)
    return Landscape(cfg, data, model, optimizer, device, float(lr), int(ckpt["step"]), seed)


def measure_arms(land: Landscape, arms: list[Arm], horizons: list[int], replicates: int,
                 bn_steps: list[int], progress: bool = True) -> dict[str, Any]:
    """gains[bn][metric][horizon]: (arms x replicates) arrays; replicate r uses the training
    batches of steps start + r * K_max + k, k < K_max, for every arm."""
    k_max = max(horizons)
    before = land.metrics(bn_steps)
    table = {bn: {m: {k: np.zeros((len(arms), replicates)) for k in horizons} for m in METRICS}
             for bn in BN_VARIANTS}
    for a, arm in enumerate(arms):
        for r in range(replicates):
            land.restore(arm.lr_scale)
            for k in range(1, k_max + 1):
                land.sgd_step(land.start_step + r * k_max + k - 1, arm.probs, stream=0)
                if k in horizons:
                    for bn, after in land.metrics(bn_steps).items():
                        for m, g in gains(before[bn], after).items():
                            table[bn][m][k][a, r] = g
        if progress:
            print(f"permrl: landscape: arm {a + 1}/{len(arms)} ({arm.name}) done",
                  file=sys.stderr)
    return {"before": before, "gains": table}


def metric_reward(metric: str, history: list[tuple[int, float]], iteration: int,
                  value: float) -> float:
    """Eq. 7 for any metric, as a gain: E_BL - E_{t+1} for the error and the cross-entropy,
    the same on the negated mean log ratio (higher is better) for `log_ratio`."""
    sign = -1.0 if metric == "log_ratio" else 1.0
    r = reward([(i, sign * e) for i, e in history], iteration, sign * value)
    assert r is not None, "Eq. 7 needs two earlier values"
    return r


def loop_rewards(land: Landscape, horizons: list[int], cycles: int, sgd_steps: int,
                 first_step: int) -> dict[str, dict[int, list[float]]]:
    """Eq. 7 rewards of ordinary cycles with uniform draws from the checkpoint (stored BN,
    as in training): validate, then per cycle N steps, validate (E_t), K_max steps with a
    validation at each horizon k (E_{t+1} at k, extrapolated over k iterations)."""
    uniform = np.full(len(land.perms), 1.0 / len(land.perms))
    k_max = max(horizons)
    land.restore()
    history = {m: [(0, v)] for m, v in state_metrics(land.state()).items()}
    rewards: dict[str, dict[int, list[float]]] = {m: {k: [] for k in horizons} for m in METRICS}
    step, it = first_step, 0
    for _ in range(cycles):
        for _ in range(sgd_steps):
            land.sgd_step(step, uniform, stream=10)
            step, it = step + 1, it + 1
        for m, v in state_metrics(land.state()).items():
            history[m] = [history[m][-1], (it, v)]
        for k in range(1, k_max + 1):
            land.sgd_step(step, uniform, stream=10)
            step += 1
            if k in horizons:
                for m, v in state_metrics(land.state()).items():
                    rewards[m][k].append(metric_reward(m, history[m], it + k, v))
        it += k_max
        history = {m: [history[m][-1], (it, v)] for m, v in state_metrics(land.state()).items()}
    return rewards


def checkpoint_groups(land: Landscape, num_groups: int) -> tuple[PermutationGroups, np.ndarray]:
    """The k-means groups of the checkpoint's state (as `GroupSampler.regroup` makes them)
    and each permutation's validation error."""
    land.restore()
    state = land.state()
    errors = state.per_permutation_error.numpy()
    return group_permutations(state.ratios.numpy(), num_groups, land.seed), errors


def sigma(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
