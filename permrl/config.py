"""One validated configuration: nested dataclasses, YAML files, dotted overrides, two presets.

Resolution order: dataclass defaults (the `cpu` preset) <- preset <- YAML file <- `--set key=value`.
Every key is checked on load: an unknown key or a bad value is a `ConfigError` whose one-line
message names the key and what is allowed.

Each key is declared once, where it is (`key`): its default, its meaning and its allowed values
(choices, which the library modules define, or bounds); `check_keys` checks them all and
`validate` adds only the checks that involve several keys; docs/config.md is generated from
the declarations (`permrl.config_reference`).

Why this long: one dataclass per config section with every key declared, the two presets, and
the loader with its one-line errors.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from permrl.errors import UserError
from permrl.evaluate.knn import PRECISIONS
from permrl.models.trunk import BLOCKS, block_size, min_input_size
from permrl.permutations import CRITERIA
from permrl.policy.reinforce import ADVANTAGES, OPTIMIZERS, PRIORS
from permrl.policy.samplers import EPISODE_ACTIONS, REWARD_BASELINES, REWARD_METRICS


class ConfigError(UserError):
    """A user error in a configuration: one line naming the key."""


PRESETS: dict[str, dict[str, Any]] = {
    # width 1/4, conv1 stride 2, 32 px tiles: ~60-80 ms per batch of 64 puzzles on 2 CPU cores.
    "cpu": {},
    # Full CaffeNet widths, 225 px image, 75 px cells, 64 px tiles, 1000 permutations,
    # SGD as in the jigsaw solver the paper builds on; 227 px evaluation at conv1 stride 4.
    "paper": {
        "model": {"width": 1.0, "conv1_stride": 2, "fc6": 512, "fc7": 4096, "lstm": 1024,
                  "dropout": 0.5},
        "spatial": {"cell": 75, "tile": 64, "permutations": 1000},
        "temporal": {"frames": 8, "frame_size": 64, "permutations": 1000},
        "train": {
            "optimizer": "sgd", "lr": 0.01, "batch_size": 256, "schedule": "step",
            "step_size": 62_500, "steps": 350_000, "warmup_steps": 0,
            "val_every": 5000, "checkpoint_every": 5000, "log_every": 50,
        },
        "eval": {"input_size": 227, "conv1_stride": 4},
        "cycle": {"sgd_steps": 500, "episode_batches": 10},
        "data": {"workers": 8},
    },
}

TASKS = ("spatial", "temporal")  # the two ordering tasks, in canonical order
ADAPTIVE_POLICIES = ("reinforce", "exp3", "hardness")  # samplers that act on groups of Psi
POLICIES = ("uniform", *ADAPTIVE_POLICIES, "fixed")  # every value of `policy`

BOUNDS = {"above": lambda v, b: v > b, "at_least": lambda v, b: v >= b,  # a key's bounds
          "below": lambda v, b: v < b, "at_most": lambda v, b: v <= b}


def key(default: Any, help: str, *, choices: tuple[str, ...] = (), above: float | None = None,
        at_least: float | None = None, below: float | None = None,
        at_most: float | None = None) -> Any:
    """One config key: its default, its meaning (docs/config.md) and its allowed values, a
    choice or bounds, checked on every load (`check_keys`)."""
    meta = {"help": help, "choices": choices, "above": above, "at_least": at_least,
            "below": below, "at_most": at_most}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def allowed(meta: Mapping[str, Any]) -> str:
    """A key's allowed values in words: "one of a, b", "positive", ">= 0", "in 0..1",
    "in (0, 1]", "below 1"; "" when any value of its type is."""
    if meta.get("choices"):
        return "one of " + ", ".join(meta["choices"])
    above, at_least, below, at_most = (meta.get(k) for k in BOUNDS)
    low = above if above is not None else at_least
    high = below if below is not None else at_most
    if low is not None and high is not None:
        if above is None and below is None:
            return f"in {low:g}..{high:g}"
        return (f"in {'(' if above is not None else '['}{low:g}, "
                f"{high:g}{')' if below is not None else ']'}")
    if above is not None:
        return "positive" if above == 0 else f"above {above:g}"
    if at_least is not None:
        return f">= {at_least:g}"
    if below is not None:
        return f"below {below:g}"
    return "" if at_most is None else f"at most {at_most:g}"


def check_keys(obj: Any, prefix: str = "") -> None:
    """Every key of a (nested) config against its declared choices and bounds (`key`)."""
    for f in dataclasses.fields(obj):
        value, meta, name = getattr(obj, f.name), f.metadata, f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_keys(value, f"{name}.")
        elif meta.get("choices"):
            for v in value if isinstance(value, list) else [value]:
                if v not in meta["choices"]:
                    raise ConfigError(f"{name}: {v!r} is not one of {', '.join(meta['choices'])}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not all(
                meta.get(k) is None or test(value, meta[k]) for k, test in BOUNDS.items()):
            raise ConfigError(f"{name}: must be {allowed(meta)}, got {value}")


@dataclass
class DataConfig:
    images: str = key("demo", "image source for the spatial task, \"KIND:PATH\" (docs/data.md)")
    videos: str = key("demo-videos", "video source for the temporal task")
    workers: int = key(1, "DataLoader worker processes per task (0 = load in the main process)",
                       at_least=0)
    decode_threads: int = key(1, "FFmpeg threads per worker", above=0)
    max_bad_fraction: float = key(0.1, "stop when more of the items read so far are unreadable",
                                  at_least=0, at_most=1)


@dataclass
class ModelConfig:
    width: float = key(0.25, "channel multiplier of CaffeNet (1.0 = paper)", above=0)
    conv1_stride: int = key(2, "on puzzle tiles; evaluation has its own (eval.conv1_stride)",
                            above=0)
    fc6: int = key(256, "per-tile fc6 units", above=0)
    fc7: int = key(1024, "fc7 units of the spatial head (over the concatenated tiles)", above=0)
    lstm: int = key(256, "temporal head: LSTM hidden units", above=0)
    dropout: float = key(0.1, "after fc6 and fc7 (paper preset: 0.5, as in the jigsaw network)",
                         at_least=0, below=1)
    channels_last: bool = key(True, "NHWC memory format (faster convolutions on CPU and GPU)")


@dataclass
class PermutationConfig:
    """What both ordering tasks share: their own Psi and their own augmentation strength."""

    permutations: int = key(100, "|Psi|", above=0)
    criterion: str = key("maxmin", "Hamming selection: maxmin | maxmean", choices=CRITERIA)
    permutation_seed: int = key(0, "seed of the greedy Hamming selection of Psi", at_least=0)
    include_identity: bool = key(False, "force the identity order into Psi")
    permutation_file: str | None = key(None, "a saved set overrides count/criterion/seed")
    grey_prob: float = key(0.3, "fraction of samples turned grey", at_least=0, at_most=1)
    colour_jitter: float = key(0.2, "per-part (tile or frame) saturation/gamma jitter strength",
                               at_least=0)


@dataclass
class SpatialConfig(PermutationConfig):
    grid: int = key(3, "m: the image is cut into m x m cells", above=0)
    cell: int = key(36, "cell size in px; the puzzle image is grid*cell px square", above=0)
    tile: int = key(32, "tile cut from each cell (cell - tile = jitter range)", above=0)


@dataclass
class TemporalConfig(PermutationConfig):
    frames: int = key(6, "u: frames per clip, shuffled by a permutation of Psi_T", above=0)
    frame_size: int = key(48, "px: each frame is cropped and resized to this square size (48: pool5"
                          " keeps a 2 x 2 layout at conv1 stride 2; 32 px tiles give 1 x 1)",
                          above=0)
    exclude_reversals: bool = key(True, "Psi_T never holds both psi and its reversal u-1-psi")
    stride_min: int = key(1, "frames are taken every `stride` frames, stride drawn in min..max",
                          above=0)
    stride_max: int = key(4, "upper end of the stride range", above=0)
    crop_min: float = key(0.6, "one random square crop per clip: side in crop_min..1 of the frame",
                          above=0, at_most=1)
    permutation_seed: int = key(1, "(a different Psi_T than Psi_S by default)", at_least=0)


@dataclass
class TrainConfig:
    steps: int = key(2000, "SGD iterations of the network", above=0)
    batch_size: int = key(64, "global batch (split over torchrun processes)", above=0)
    optimizer: str = key("adam", "adam (AdamW) | sgd", choices=("adam", "sgd"))
    lr: float = key(1e-3, "peak learning rate", above=0)
    momentum: float = key(0.9, "sgd only (adam is AdamW with its default betas)", at_least=0)
    weight_decay: float = key(5e-4, "on weights, not biases or BatchNorm (AdamW: decoupled)",
                              at_least=0)
    schedule: str = key("cosine", "constant | cosine | step",
                        choices=("constant", "cosine", "step"))
    warmup_steps: int = key(100, "linear learning-rate warm-up", at_least=0)
    step_size: int = key(100_000, "for schedule=step: lr x0.1 every step_size steps", above=0)
    val_size: int = key(0, "|X_val|: held-out items per task, excluded from training; 0 = 10 % of "
                        "the source, at most 100, at least 4 (data.batches.validation_size)",
                        at_least=0)
    val_every: int = key(500, "held-out puzzle accuracy every N steps (0 = only at the end)",
                         at_least=0)
    serial_switch: int = key(0, "S&T: spatial alone until this step, then temporal (0 = S+T)",
                             at_least=0)
    log_every: int = key(20, "a metrics.jsonl line and the progress bar every N steps", above=0)
    checkpoint_every: int = key(500, "a step checkpoint every N steps (and at the end)", above=0)
    keep_checkpoints: int = key(3, "step checkpoints kept besides checkpoint.pt", above=0)
    nan_policy: str = key("stop", "non-finite loss/gradient: stop | lower_lr (skip the step)",
                          choices=("stop", "lower_lr"))
    nan_lr_factor: float = key(0.5, "lower_lr: multiply the learning rate by this",
                               above=0, below=1)
    nan_max_skips: int = key(5, "lower_lr: stop after this many skipped steps in a row", above=0)
    device: str = key("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    amp: bool = key(True, "bf16 autocast for the training forward on CUDA (no effect on CPU)")
    compile: bool = key(False, "torch.compile the model for training")
    float64: bool = key(False, "weights and arithmetic in float64 (CPU): for exactness checks such "
                        "as 2 processes = 1 process, where float32 rounding flips ReLU/max-pool "
                        "decisions")
    threads: int = key(0, "torch intra-op threads (0 = torch default)", at_least=0)


@dataclass
class EvalConfig:
    input_size: int = key(64, "evaluation images (paper: 227)", above=0)
    conv1_stride: int = key(2, "paper: 4 on 227 px images, same weights as training", above=0)
    layer: str = key("pool5", "trunk block whose output is the retrieval feature", choices=BLOCKS)
    knn_every: int = key(0, "retrieval during training every N steps (0 = never; Fig. 5)",
                         at_least=0)
    knn_train: str = key("demo-photos?subset=gallery", "gallery source for knn_every")
    knn_test: str = key("demo-photos?subset=query", "query source for knn_every")
    precision: str = key("float32", "retrieval and probe features: float32 (exact) | bf16 (the "
                         "trunk under bf16 autocast with NHWC tensors: faster on a GPU, "
                         "similarities in float32)", choices=PRECISIONS)


@dataclass
class CycleConfig:
    """The cycle of Sect. 3.2 (design §5) for every adaptive sampler (reinforce, exp3, hardness,
    fixed): N, K, the groups |C| that are its actions, and what an episode's reward compares."""

    sgd_steps: int = key(100, "N: SGD iterations with the policy fixed between episodes", above=0)
    episode_batches: int = key(5, "K: mini-batches of actions per episode", above=0)
    episode_actions: str = key("sample", "sample: a group per sample (K x B actions) | batch: a "
                               "group per episode mini-batch (K actions) | episode: one group; "
                               "policy and exp3 only", choices=EPISODE_ACTIONS)
    groups: int = key(10, "|C|: k-means groups of Psi = the action space", above=0)
    reward_metric: str = key("error", "what the reward compares: error (0/1, Eq. 6: the paper's) | "
                             "cross_entropy (mean) | log_ratio (mean log softmax ratio, Eq. 3); "
                             "policy and exp3 only", choices=REWARD_METRICS)
    reward_baseline: str = key("extrapolated", "extrapolated: E_BL of Eq. 7 (the paper's) | twin: a"
                               " copy forked at the episode's start, trained on uniform draws of "
                               "the same batches", choices=REWARD_BASELINES)


@dataclass
class ReinforceConfig:
    """The REINFORCE learner of pi (Eq. 8-9); each task has its own."""

    hidden: int = key(16, "policy MLP hidden units", above=0)
    lr: float = key(1.0, "alpha of Eq. 9 (plain gradient steps on normalised advantages)", above=0)
    optimizer: str = key("sgd", "sgd (Eq. 9) | adam (permrl 0.1)", choices=OPTIMIZERS)
    entropy_weight: float = key(0.01, "beta: weight of the regulariser (-KL to the prior, or H)",
                                at_least=0)
    advantage: str = key("normalised", "normalised: (R - b) / running spread | raw: R - b (Eq. 9)",
                         choices=ADVANTAGES)
    prior: str = key("psi", "psi: untrained policy uniform over Psi, KL(q||pi) | groups: H (Eq. 9)",
                     choices=PRIORS)
    baseline_momentum: float = key(0.9, "moving average of returns (and of their spread)",
                                   at_least=0, below=1)
    gamma: float = key(0.0, "discount; 0 credits each episode with its own reward",
                       at_least=0, at_most=1)
    horizon: int = key(1, "episodes summed into a return when gamma > 0", above=0)


@dataclass
class BanditConfig:
    """The adaptive baselines (`policy: exp3 | hardness`); they use the policy's schedule and
    groups (cycle.sgd_steps, episode_batches, groups)."""

    exploration: float = key(0.05, "share of draws uniform over Psi (both baselines)",
                             at_least=0, at_most=1)
    exp3_lr: float = key(1.0, "eta of Exp3.S (Graves et al. 2017)", above=0)
    exp3_switch: float = key(0.01, "alpha of Exp3.S: weight mass shared with the other groups",
                             at_least=0, at_most=1)
    fixed_share: float = key(0.5, "policy fixed: draws uniform over this hardest share of Psi",
                             above=0, at_most=1)


@dataclass
class Config:
    preset: str = key("cpu", "the defaults this config starts from", choices=tuple(PRESETS))
    seed: int = key(0, "weights, data order, crops and draws: a run is a function of it",
                    at_least=0)
    tasks: list[str] = key(["spatial"], "S, T or both (S+T)", choices=TASKS)
    policy: str = key("uniform", "how permutations are drawn: uniform | reinforce (Sect. 3.2) | "
                      "exp3 | hardness (adaptive baselines over the same groups, not in the paper)"
                      " | fixed (the ceiling arm: always the hardest bandit.fixed_share of Psi, "
                      "re-chosen at each state)", choices=POLICIES)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cycle: CycleConfig = field(default_factory=CycleConfig)
    reinforce: ReinforceConfig = field(default_factory=ReinforceConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)




def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check (and gently convert) one leaf value against its type hint."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is list:
        if not isinstance(value, list):
            value = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, v, args[0]) for v in value]
    if args and type(None) in args:  # Optional[X]
        if value is None or value == "null":
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unhandled type {hint} for {key}")


RENAMED = {f"reinforce.{k}": f"cycle.{k}" for k in (  # permrl 0.2's names, until 0.4
    "sgd_steps", "episode_batches", "groups", "episode_actions", "reward_metric",
    "reward_baseline")}


def renamed(values: dict[str, Any], where: str | None) -> dict[str, Any]:
    """`values` with the keys of RENAMED under their new names; each said in one line on
    stderr naming `where` they came from (None: silently, e.g. a checkpoint's own config)."""
    old = values.get("reinforce")
    moved = {k: v for k, v in old.items() if f"reinforce.{k}" in RENAMED} if isinstance(
        old, dict) else {}
    if not moved:
        return values
    for k in moved if where else ():
        print(f"permrl: notice: {where}: reinforce.{k} is now {RENAMED['reinforce.' + k]} (the "
              "old name works until permrl 0.4)", file=sys.stderr)
    cycle = values.get("cycle") if isinstance(values.get("cycle"), dict) else {}
    return {**values, "reinforce": {k: v for k, v in old.items() if k not in moved},
            "cycle": {**moved, **cycle}}


def _merge(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested dict of updates to a dataclass instance, checking every key and type."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {updates!r}")
    hints = get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown key {full!r}; allowed here: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, {} if value is None else value, f"{full}.")
        else:
            setattr(obj, key, _coerce(full, value, hints[key]))


def validate(cfg: Config) -> Config:
    """Every key's choices and bounds (`check_keys`), then the checks that involve several
    keys; every failure is a one-line ConfigError naming the key."""
    check_keys(cfg)
    s = cfg.spatial
    if s.tile > s.cell:
        raise ConfigError(f"spatial.tile: {s.tile} px is larger than spatial.cell ({s.cell} px)")
    if s.grid * s.grid > 12:
        raise ConfigError(f"spatial.grid: {s.grid}x{s.grid} tiles is too many (at most 3x3)")
    n_max = math.factorial(s.grid * s.grid)
    if s.permutations > n_max:
        raise ConfigError(
            f"spatial.permutations: {s.permutations} exceeds the {n_max} permutations of "
            f"{s.grid * s.grid} tiles"
        )
    for key, size, stride_key, stride in (
        ("spatial.tile", s.tile, "model.conv1_stride", cfg.model.conv1_stride),
        ("temporal.frame_size", cfg.temporal.frame_size, "model.conv1_stride",
         cfg.model.conv1_stride),
        ("eval.input_size", cfg.eval.input_size, "eval.conv1_stride", cfg.eval.conv1_stride),
    ):
        if block_size(size, stride) < 1:
            raise ConfigError(f"{key}: {size} px is too small for the trunk at {stride_key} "
                              f"{stride}; pool5 needs at least {min_input_size(stride)} px")
    t = cfg.temporal
    if t.frames < 2:
        raise ConfigError(f"temporal.frames: at least 2 frames are needed, got {t.frames}")
    t_max = math.factorial(t.frames) // (2 if t.exclude_reversals else 1)
    if t.permutations > t_max:
        twins = " without reversal twins (temporal.exclude_reversals)" * t.exclude_reversals
        raise ConfigError(f"temporal.permutations: {t.permutations} exceeds the {t_max} "
                          f"permutations of {t.frames} frames{twins}")
    if t.stride_min > t.stride_max:
        raise ConfigError(f"temporal.stride_min ({t.stride_min}) is larger than "
                          f"temporal.stride_max ({t.stride_max})")
    r = cfg.cycle
    for task in cfg.tasks:
        if cfg.policy in ADAPTIVE_POLICIES and r.groups > getattr(cfg, task).permutations:
            raise ConfigError(f"cycle.groups: {r.groups} groups exceed the "
                              f"{getattr(cfg, task).permutations} permutations of {task}")
    if not cfg.tasks:
        raise ConfigError("tasks: at least one task is needed (spatial, temporal)")
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ConfigError(f"tasks: {cfg.tasks} names a task twice")
    if cfg.train.serial_switch:
        if sorted(cfg.tasks) != ["spatial", "temporal"]:
            raise ConfigError("train.serial_switch (S&T) needs tasks: [spatial, temporal]")
        if cfg.train.serial_switch >= cfg.train.steps or cfg.train.serial_switch < 1:
            raise ConfigError(f"train.serial_switch: {cfg.train.serial_switch} leaves no "
                              f"temporal steps before train.steps ({cfg.train.steps})")
    return cfg


def model_tasks(cfg: Config) -> list[str]:
    """The configured tasks in canonical order (spatial first): the heads a model has."""
    return [t for t in TASKS if t in cfg.tasks]


def active_tasks(cfg: Config, step: int) -> list[str]:
    """The tasks that train at step `step`: every configured task (S, T, S+T), or in S&T
    spatial before `train.serial_switch` and temporal from it."""
    return [task for task in model_tasks(cfg) if step in task_steps(cfg, task)]


def task_steps(cfg: Config, task: str) -> range:
    """The step indices at which `task` trains: all of them, or its half of S&T."""
    switch, steps = cfg.train.serial_switch, cfg.train.steps
    if not switch:
        return range(steps)
    return range(switch) if task == "spatial" else range(switch, steps)


def idle_policy(cfg: Config) -> str | None:
    """Why an adaptive policy would never be updated in this run (it would then equal the
    uniform sampler, silently), or None. `permrl train` warns, `permrl ablate` refuses."""
    for task in cfg.tasks if cfg.policy != "uniform" else []:
        if policy_updates(cfg, task) == 0:
            cycle = cfg.cycle.sgd_steps + cfg.cycle.episode_batches
            span = (f"train.steps = {cfg.train.steps}" if not cfg.train.serial_switch else
                    f"{task} trains {len(task_steps(cfg, task))} steps of train.steps = "
                    f"{cfg.train.steps} (train.serial_switch = {cfg.train.serial_switch})")
            return (f"policy={cfg.policy} never acts on {task}: its first update comes after "
                    f"cycle.sgd_steps + cycle.episode_batches = {cycle} steps, but "
                    f"{span}; lower cycle.sgd_steps or raise train.steps")
    return None


def policy_updates(cfg: Config, task: str) -> int:
    """How many policy updates (episodes, Sect. 3.2) `task` gets in a run (`Cycle.updates`)."""
    from permrl.policy.cycle import Cycle

    r = cfg.cycle
    return Cycle(r.sgd_steps, r.episode_batches).updates(task_steps(cfg, task))


def get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's problem and where, in one line: "expected ',' or ']' (line 3, column 2)"."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def parse_override(text: str) -> dict[str, Any]:
    """'train.lr=0.01' -> {'train': {'lr': 0.01}}; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if raw.lstrip()[:1] in ("[", "{"):  # a list or mapping must parse: no silent string
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {text!r}: {yaml_problem(e)} (quote the whole "
                              f"argument, e.g. --set \"{key}=[a, b]\")") from None
    else:
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(
    path: str | Path | None = None, preset: str | None = None, overrides: list[str] = ()
) -> Config:
    """Defaults <- preset <- YAML file <- overrides, validated."""
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            file_values = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path} is not valid YAML: {yaml_problem(e)}") from None
        if not isinstance(file_values, dict):
            raise ConfigError(f"config {path}: expected a mapping at the top level")
    layers = [renamed(file_values, f"config {path}")] + [
        renamed(parse_override(o), f"--set {o}") for o in overrides]
    name = preset or next((lay["preset"] for lay in reversed(layers) if "preset" in lay), "cpu")
    if name not in PRESETS:
        raise ConfigError(f"preset: {name!r} is not one of {', '.join(PRESETS)}")
    cfg = Config()
    _merge(cfg, PRESETS[name])
    for layer in layers:
        _merge(cfg, layer)
    cfg.preset = name
    return validate(cfg)


def config_with(values: dict[str, Any], overrides: list[str]) -> Config:
    """A resolved config (e.g. a checkpoint's) with `key=value` overrides, validated."""
    cfg = Config()
    _merge(cfg, renamed(values, None))
    for o in overrides:
        _merge(cfg, renamed(parse_override(o), f"--set {o}"))
    return validate(cfg)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a resolved config (e.g. from a checkpoint)."""
    cfg = Config()
    _merge(cfg, renamed(values, None))
    return validate(cfg)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flat_keys(cfg: Config) -> dict[str, Any]:
    """{"train.lr": 0.001, ...}: every key of the config by its dotted name, in order."""

    def leaves(d: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out |= leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out

    return leaves(to_dict(cfg), "")


def config_differences(old: Config, new: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """`key: old -> new` for every key whose value differs, in the config's order; keys under
    a name in `ignore` (e.g. "train") are left out."""
    a, b = flat_keys(old), flat_keys(new)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a
            if a[k] != b[k] and not any(k == i or k.startswith(f"{i}.") for i in ignore)]
