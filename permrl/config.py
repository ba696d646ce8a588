"""One validated configuration: nested dataclasses, YAML files, dotted overrides, two presets.

Resolution order: dataclass defaults (the `cpu` preset) <- preset <- YAML file <- `--set key=value`.
Every key is checked on load: an unknown key or a bad value is a `ConfigError` whose one-line
message names the key and what is allowed.

Why this long: one dataclass per config section with a comment on every key (the source of
docs/config.md), the two presets, and the loader with its one-line errors.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from permrl.errors import UserError
from permrl.models.trunk import block_size, min_input_size


class ConfigError(UserError):
    """A user error in a configuration: one line naming the key."""


@dataclass
class DataConfig:
    images: str = "demo"  # image source for the spatial task, "KIND:PATH" (docs/data.md)
    videos: str = "demo-videos"  # video source for the temporal task
    workers: int = 1  # DataLoader worker processes per task (0 = load in the main process)
    decode_threads: int = 1  # FFmpeg threads per worker
    max_bad_fraction: float = 0.1  # stop when more of the items read so far are unreadable


@dataclass
class ModelConfig:
    width: float = 0.25  # channel multiplier of CaffeNet (1.0 = paper)
    conv1_stride: int = 2  # on puzzle tiles; evaluation has its own (eval.conv1_stride)
    fc6: int = 256  # per-tile fc6 units
    fc7: int = 1024  # fc7 units of the spatial head (over the concatenated tiles)
    lstm: int = 256  # temporal head: LSTM hidden units
    dropout: float = 0.1  # after fc6 and fc7 (paper preset: 0.5, as in the jigsaw network)
    channels_last: bool = True  # NHWC memory format (faster convolutions on CPU and GPU)


@dataclass
class PermutationConfig:
    """What both ordering tasks share: their own Psi and their own augmentation strength."""

    permutations: int = 100  # |Psi|
    criterion: str = "maxmin"  # Hamming selection: maxmin | maxmean
    permutation_seed: int = 0  # seed of the greedy Hamming selection of Psi
    include_identity: bool = False  # force the identity order into Psi
    permutation_file: str | None = None  # a saved set overrides count/criterion/seed
    grey_prob: float = 0.3  # fraction of samples turned grey
    colour_jitter: float = 0.2  # per-part (tile or frame) saturation/gamma jitter strength


@dataclass
class SpatialConfig(PermutationConfig):
    grid: int = 3  # m: the image is cut into m x m cells
    cell: int = 36  # cell size in px; the puzzle image is grid*cell px square
    tile: int = 32  # tile cut from each cell (cell - tile = jitter range)


@dataclass
class TemporalConfig(PermutationConfig):
    frames: int = 6  # u: frames per clip, shuffled by a permutation of Psi_T
    frame_size: int = 48  # px: each frame is cropped and resized to this square size (48:
    # pool5 keeps a 2 x 2 layout at conv1 stride 2; 32 px tiles give 1 x 1)
    exclude_reversals: bool = True  # Psi_T never holds both psi and its reversal u-1-psi
    stride_min: int = 1  # frames are taken every `stride` frames, stride drawn in min..max
    stride_max: int = 4
    crop_min: float = 0.6  # one random square crop per clip: side in crop_min..1 of the frame
    permutation_seed: int = 1  # (a different Psi_T than Psi_S by default)


@dataclass
class TrainConfig:
    steps: int = 2000  # SGD iterations of the network
    batch_size: int = 64  # global batch (split over torchrun processes)
    optimizer: str = "adam"  # adam (AdamW) | sgd
    lr: float = 1e-3  # peak learning rate
    momentum: float = 0.9  # sgd only (adam is AdamW with its default betas)
    weight_decay: float = 5e-4  # on weights, not biases or BatchNorm (AdamW: decoupled)
    schedule: str = "cosine"  # constant | cosine | step
    warmup_steps: int = 100  # linear learning-rate warm-up
    step_size: int = 100_000  # for schedule=step: lr x0.1 every step_size steps
    val_size: int = 0  # |X_val|: held-out items per task, excluded from training; 0 = 10 %
    # of the source, at most 100, at least 4 (data.batches.validation_size)
    val_every: int = 500  # held-out puzzle accuracy every N steps (0 = only at the end)
    serial_switch: int = 0  # S&T: spatial alone until this step, then temporal (0 = S+T)
    log_every: int = 20  # a metrics.jsonl line and the progress bar every N steps
    checkpoint_every: int = 500  # a step checkpoint every N steps (and at the end)
    keep_checkpoints: int = 3  # step checkpoints kept besides checkpoint.pt
    nan_policy: str = "stop"  # non-finite loss/gradient: stop | lower_lr (skip the step)
    nan_lr_factor: float = 0.5  # lower_lr: multiply the learning rate by this
    nan_max_skips: int = 5  # lower_lr: stop after this many skipped steps in a row
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast for the training forward on CUDA (no effect on CPU)
    compile: bool = False  # torch.compile the model for training
    float64: bool = False  # weights and arithmetic in float64 (CPU): for exactness checks such
    # as 2 processes = 1 process, where float32 rounding flips ReLU/max-pool decisions
    threads: int = 0  # torch intra-op threads (0 = torch default)


@dataclass
class EvalConfig:
    input_size: int = 64  # evaluation images (paper: 227)
    conv1_stride: int = 2  # paper: 4 on 227 px images, same weights as training
    layer: str = "pool5"  # trunk block whose output is the retrieval feature
    knn_every: int = 0  # retrieval during training every N steps (0 = never; Fig. 5)
    knn_train: str = "demo-photos?subset=gallery"  # gallery source for knn_every
    knn_test: str = "demo-photos?subset=query"  # query source for knn_every
    precision: str = "float32"  # retrieval and probe features: float32 (exact) | bf16 (the
    # trunk under bf16 autocast with NHWC tensors: faster on a GPU, similarities in float32)


@dataclass
class ReinforceConfig:
    """The permutation policy (Sect. 3.2, design §5); each task has its own."""

    sgd_steps: int = 100  # N: SGD iterations with the policy fixed between episodes
    episode_batches: int = 5  # K: mini-batches of actions per episode
    episode_actions: str = "sample"  # sample: a group per sample (K x B actions) | batch: a
    # group per episode mini-batch (K actions) | episode: one group; policy and exp3 only
    groups: int = 10  # |C|: k-means groups of Psi = the action space
    reward_metric: str = "error"  # what the reward compares: error (0/1, Eq. 6: the paper's) |
    # cross_entropy (mean) | log_ratio (mean log softmax ratio, Eq. 3); policy and exp3 only
    reward_baseline: str = "extrapolated"  # extrapolated: E_BL of Eq. 7 (the paper's) | twin:
    # a copy forked at the episode's start, trained on uniform draws of the same batches
    hidden: int = 16  # policy MLP hidden units
    lr: float = 1.0  # alpha of Eq. 9 (plain gradient steps on normalised advantages)
    optimizer: str = "sgd"  # sgd (Eq. 9) | adam (permrl 0.1)
    entropy_weight: float = 0.01  # beta: weight of the regulariser (-KL to the prior, or H)
    advantage: str = "normalised"  # normalised: (R - b) / running spread | raw: R - b (Eq. 9)
    prior: str = "psi"  # psi: untrained policy uniform over Psi, KL(q||pi) | groups: H (Eq. 9)
    baseline_momentum: float = 0.9  # moving average of returns (and of their spread)
    gamma: float = 0.0  # discount; 0 credits each episode with its own reward
    horizon: int = 1  # episodes summed into a return when gamma > 0


@dataclass
class BanditConfig:
    """The adaptive baselines (`policy: exp3 | hardness`); they use the policy's schedule and
    groups (reinforce.sgd_steps, episode_batches, groups)."""

    exploration: float = 0.05  # share of draws uniform over Psi (both baselines)
    exp3_lr: float = 1.0  # eta of Exp3.S (Graves et al. 2017)
    exp3_switch: float = 0.01  # alpha of Exp3.S: weight mass shared with the other groups
    fixed_share: float = 0.5  # policy fixed: draws uniform over this hardest share of Psi


@dataclass
class Config:
    preset: str = "cpu"  # the defaults this config starts from
    seed: int = 0  # weights, data order, crops and draws: a run is a function of it
    tasks: list[str] = field(default_factory=lambda: ["spatial"])  # S, T or both (S+T)
    policy: str = "uniform"  # how permutations are drawn: uniform | reinforce (Sect. 3.2) |
    # exp3 | hardness (adaptive baselines over the same groups, not in the paper) | fixed (the
    # ceiling arm: always the hardest bandit.fixed_share of Psi, re-chosen at each state)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    spatial: SpatialConfig = field(default_factory=SpatialConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reinforce: ReinforceConfig = field(default_factory=ReinforceConfig)
    bandit: BanditConfig = field(default_factory=BanditConfig)


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
        "reinforce": {"sgd_steps": 500, "episode_batches": 10},
        "data": {"workers": 8},
    },
}

TASKS = ("spatial", "temporal")  # the two ordering tasks, in canonical order
ADAPTIVE_POLICIES = ("reinforce", "exp3", "hardness")  # samplers that act on groups of Psi

CHOICES = {
    "preset": tuple(PRESETS),
    "tasks": TASKS,
    "policy": ("uniform", *ADAPTIVE_POLICIES, "fixed"),
    "reinforce.optimizer": ("sgd", "adam"),
    "reinforce.advantage": ("normalised", "raw"),
    "reinforce.prior": ("psi", "groups"),
    "reinforce.episode_actions": ("sample", "batch", "episode"),
    "reinforce.reward_baseline": ("extrapolated", "twin"),
    "reinforce.reward_metric": ("error", "cross_entropy", "log_ratio"),
    "spatial.criterion": ("maxmin", "maxmean"),
    "temporal.criterion": ("maxmin", "maxmean"),
    "train.optimizer": ("adam", "sgd"),
    "train.schedule": ("constant", "cosine", "step"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.nan_policy": ("stop", "lower_lr"),
    "eval.precision": ("float32", "bf16"),
    "eval.layer": ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"),
}


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


def _positive(cfg: Config) -> list[str]:
    return [
        "model.conv1_stride", "model.fc6", "model.fc7", "model.lstm", "spatial.grid",
        "spatial.cell", "spatial.tile", "spatial.permutations", "temporal.frames",
        "temporal.frame_size",
        "temporal.permutations", "temporal.stride_min", "temporal.stride_max",
        "temporal.crop_min", "data.decode_threads", "train.steps", "train.batch_size",
        "train.log_every", "reinforce.sgd_steps", "train.keep_checkpoints",
        "train.nan_lr_factor", "train.nan_max_skips",
        "reinforce.episode_batches", "reinforce.groups", "reinforce.hidden", "reinforce.lr",
        "reinforce.horizon", "train.checkpoint_every", "train.step_size", "bandit.exp3_lr",
        "eval.input_size", "eval.conv1_stride",
    ]


def validate(cfg: Config) -> Config:
    """Cross-field checks; every failure is a one-line ConfigError naming the key."""
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        for v in value if isinstance(value, list) else [value]:
            if v not in allowed:
                raise ConfigError(f"{key}: {v!r} is not one of {', '.join(allowed)}")
    for key in _positive(cfg):
        if get(cfg, key) <= 0:
            raise ConfigError(f"{key}: must be positive, got {get(cfg, key)}")
    for key in ("data.workers", "train.val_size", "train.warmup_steps", "train.val_every",
                "train.threads",
                "train.serial_switch", "eval.knn_every", "reinforce.entropy_weight",
                "reinforce.gamma",
                "reinforce.baseline_momentum", "temporal.grey_prob", "temporal.colour_jitter",
                "train.weight_decay", "train.momentum", "model.dropout",
                "spatial.grey_prob", "spatial.colour_jitter"):
        if get(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {get(cfg, key)}")
    for key in ("model.width", "train.lr"):
        if get(cfg, key) <= 0:
            raise ConfigError(f"{key}: must be positive, got {get(cfg, key)}")
    for key in ("seed", "spatial.permutation_seed", "temporal.permutation_seed"):
        if get(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {get(cfg, key)}")
    if not 0 <= cfg.data.max_bad_fraction <= 1:
        raise ConfigError(f"data.max_bad_fraction: must be in 0..1, got "
                          f"{cfg.data.max_bad_fraction}")
    if cfg.train.nan_lr_factor >= 1:
        raise ConfigError(f"train.nan_lr_factor: must be below 1, got {cfg.train.nan_lr_factor}")
    if cfg.model.dropout >= 1:
        raise ConfigError(f"model.dropout: must be below 1, got {cfg.model.dropout}")
    if cfg.spatial.grey_prob > 1:
        raise ConfigError(f"spatial.grey_prob: must be at most 1, got {cfg.spatial.grey_prob}")
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
    if t.crop_min > 1 or t.grey_prob > 1:
        raise ConfigError("temporal.crop_min and temporal.grey_prob must be at most 1")
    for key in ("bandit.exploration", "bandit.exp3_switch"):
        if not 0 <= get(cfg, key) <= 1:
            raise ConfigError(f"{key}: must be in 0..1, got {get(cfg, key)}")
    if not 0 < cfg.bandit.fixed_share <= 1:
        raise ConfigError(f"bandit.fixed_share: must be in (0, 1], got {cfg.bandit.fixed_share}")
    r = cfg.reinforce
    if r.gamma > 1 or r.baseline_momentum >= 1:
        raise ConfigError("reinforce.gamma must be at most 1 and reinforce.baseline_momentum "
                          "below 1")
    for task in cfg.tasks:
        if cfg.policy in ADAPTIVE_POLICIES and r.groups > getattr(cfg, task).permutations:
            raise ConfigError(f"reinforce.groups: {r.groups} groups exceed the "
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
            cycle = cfg.reinforce.sgd_steps + cfg.reinforce.episode_batches
            span = (f"train.steps = {cfg.train.steps}" if not cfg.train.serial_switch else
                    f"{task} trains {len(task_steps(cfg, task))} steps of train.steps = "
                    f"{cfg.train.steps} (train.serial_switch = {cfg.train.serial_switch})")
            return (f"policy={cfg.policy} never acts on {task}: its first update comes after "
                    f"reinforce.sgd_steps + reinforce.episode_batches = {cycle} steps, but "
                    f"{span}; lower reinforce.sgd_steps or raise train.steps")
    return None


def policy_updates(cfg: Config, task: str) -> int:
    """How many policy updates (episodes, Sect. 3.2) `task` gets in a run (`Cycle.updates`)."""
    from permrl.policy.cycle import Cycle

    r = cfg.reinforce
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
    layers = [file_values] + [parse_override(o) for o in overrides]
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
    _merge(cfg, values)
    for o in overrides:
        _merge(cfg, parse_override(o))
    return validate(cfg)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a resolved config (e.g. from a checkpoint)."""
    cfg = Config()
    _merge(cfg, values)
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
