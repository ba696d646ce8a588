"""Configuration: defaults, presets, YAML < --set precedence, parsing, validation, round trips."""

from __future__ import annotations

import pytest

from permrl.config import (
    Config,
    ConfigError,
    config_from_dict,
    idle_policy,
    load_config,
    parse_override,
    policy_updates,
    to_dict,
    to_yaml,
)


def test_defaults_are_the_cpu_preset():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.preset == "cpu"
    assert cfg.tasks == ["spatial"]
    m, s, t, e = cfg.model, cfg.spatial, cfg.train, cfg.eval
    assert (m.width, m.conv1_stride, m.fc6, m.fc7) == (0.25, 2, 256, 1024)
    assert (s.grid, s.cell, s.tile, s.permutations) == (3, 36, 32, 100)
    assert (t.optimizer, t.lr, t.batch_size) == ("adam", 1e-3, 64)
    assert (e.input_size, e.conv1_stride, e.layer) == (64, 2, "pool5")
    assert load_config(preset="cpu") == cfg


def test_paper_preset_values():
    cfg = load_config(preset="paper")
    assert cfg.preset == "paper"
    m, s, t, e = cfg.model, cfg.spatial, cfg.train, cfg.eval
    assert (m.width, m.conv1_stride, m.fc6, m.fc7) == (1.0, 2, 512, 4096)
    assert (s.grid, s.cell, s.tile, s.permutations) == (3, 75, 64, 1000)
    assert s.grid * s.cell == 225
    assert (t.optimizer, t.lr, t.momentum, t.weight_decay, t.batch_size) == (
        "sgd", 0.01, 0.9, 5e-4, 256,
    )
    assert (e.input_size, e.conv1_stride) == (227, 4)
    # keys the preset does not name keep their defaults
    assert s.criterion == "maxmin" and cfg.seed == 0


def test_preset_named_in_file_or_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: paper\n")
    assert load_config(path).spatial.cell == 75
    assert load_config(overrides=["preset=paper"]).spatial.tile == 64
    # the explicit argument wins over the file
    assert load_config(path, preset="cpu").spatial.cell == 36


def test_precedence_defaults_preset_file_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "train:\n  lr: 0.05\n  steps: 10\nspatial:\n  permutations: 30\nseed: 7\n"
    )
    cfg = load_config(path, preset="paper", overrides=["train.lr=0.2", "seed=9"])
    assert cfg.train.lr == 0.2  # override beats file
    assert cfg.seed == 9
    assert cfg.train.steps == 10  # file beats preset (350000)
    assert cfg.spatial.permutations == 30  # file beats preset (1000)
    assert cfg.train.batch_size == 256  # preset beats default
    assert cfg.spatial.criterion == "maxmin"  # default
    # later overrides beat earlier ones
    assert load_config(overrides=["seed=1", "seed=2"]).seed == 2


def test_set_value_parsing():
    cfg = load_config(overrides=[
        "train.steps=123",
        "train.lr=0.5",
        "model.width=1",
        "model.channels_last=false",
        "spatial.include_identity=true",
        "tasks=[spatial]",
        "spatial.permutation_file=null",
        "data.images=folder:/tmp/x=y",
        "train.weight_decay=1.0e-4",
    ])
    assert cfg.train.steps == 123 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == 0.5
    assert cfg.model.width == 1.0 and isinstance(cfg.model.width, float)
    assert cfg.model.channels_last is False
    assert cfg.spatial.include_identity is True
    assert cfg.tasks == ["spatial"]
    assert cfg.spatial.permutation_file is None
    assert cfg.data.images == "folder:/tmp/x=y"  # split at the first '=' only
    assert cfg.train.weight_decay == 1e-4
    assert load_config(overrides=["spatial.permutation_file=p.npy"]).spatial.permutation_file \
        == "p.npy"
    assert load_config(overrides=["tasks=spatial"]).tasks == ["spatial"]


@pytest.mark.parametrize("how", ["override", "file"])
def test_exponent_without_dot_is_a_number(tmp_path, how):
    if how == "override":
        cfg = load_config(overrides=["train.lr=1e-3"])
    else:
        path = tmp_path / "c.yaml"
        path.write_text("train:\n  lr: 1e-3\n")
        cfg = load_config(path)
    assert cfg.train.lr == 1e-3


def test_parse_override_nesting():
    assert parse_override("train.lr=0.01") == {"train": {"lr": 0.01}}
    assert parse_override("seed=3") == {"seed": 3}
    assert parse_override("tasks=[spatial]") == {"tasks": ["spatial"]}
    assert parse_override("spatial.permutation_file=null") == {
        "spatial": {"permutation_file": None}
    }
    assert parse_override("model.channels_last=True") == {"model": {"channels_last": True}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")


BAD_OVERRIDES = [
    ("bogus=1", "bogus"),
    ("train.bogus=1", "train.bogus"),
    ("train.steps=abc", "train.steps"),
    ("train.steps=true", "train.steps"),
    ("train.steps=1.5", "train.steps"),
    ("train.lr=fast", "train.lr"),
    ("model.channels_last=1", "model.channels_last"),
    ("data.images=3", "data.images"),
    ("train.steps=0", "train.steps"),
    ("train.batch_size=-4", "train.batch_size"),
    ("spatial.cell=-1", "spatial.cell"),
    ("spatial.tile=0", "spatial.tile"),
    ("spatial.tile=40", "spatial.tile"),
    ("preset=huge", "preset"),
    ("tasks=[spatial, jumble]", "tasks"),
    ("tasks=[spatial, spatial]", "tasks"),
    ("temporal.frames=1", "temporal.frames"),
    ("temporal.permutations=800", "temporal.permutations"),
    ("temporal.permutations=361", "temporal.permutations"),  # > 6!/2 without twins
    ("temporal.frame_size=24", "temporal.frame_size"),  # pool5 needs 25 px at stride 2
    ("temporal.frame_size=0", "temporal.frame_size"),
    ("train.val_size=-1", "train.val_size"),
    ("temporal.stride_min=5", "temporal.stride_min"),
    ("train.serial_switch=10", "train.serial_switch"),
    ("train.optimizer=rmsprop", "train.optimizer"),
    ("spatial.criterion=best", "spatial.criterion"),
    ("eval.layer=fc6", "eval.layer"),
    ("spatial.permutations=362881", "spatial.permutations"),
    ("spatial.grid=4", "spatial.grid"),
    ("train.schedule=linear", "train.schedule"),
    ("model.dropout=1.0", "model.dropout"),
    ("spatial.grey_prob=1.5", "spatial.grey_prob"),
    ("train.warmup_steps=-1", "train.warmup_steps"),
    ("train=5", "train"),
    ("model.width=0", "model.width: must be positive, got 0"),
    ("train.lr=0", "train.lr: must be positive, got 0"),
    # Each kind of declared bound, said in words (`config.allowed`):
    ("bandit.fixed_share=0", "bandit.fixed_share: must be in (0, 1], got 0"),
    ("model.dropout=1", "model.dropout: must be in [0, 1), got 1"),
    ("data.max_bad_fraction=1.5", "data.max_bad_fraction: must be in 0..1, got 1.5"),
    ("train.warmup_steps=-2", "train.warmup_steps: must be >= 0, got -2"),
    ("reinforce.gamma=2", "reinforce.gamma: must be in 0..1, got 2"),
    ("temporal.crop_min=1.5", "temporal.crop_min: must be in (0, 1], got 1.5"),
    ("policy=greedy", "policy: 'greedy' is not one of uniform, reinforce, exp3, hardness, fixed"),
    ("eval.precision=fp16", "eval.precision: 'fp16' is not one of float32, bf16"),
    ("tasks=[spatial, temporal", "quote the whole argument"),  # a shell-split list
    ("train.lr=.inf", "train.lr"),
    ("tasks=[]", "tasks"),
]


@pytest.mark.parametrize("override, key", BAD_OVERRIDES, ids=[b[0] for b in BAD_OVERRIDES])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    msg = str(info.value)
    assert key in msg
    assert "\n" not in msg


def test_permutation_limits_follow_the_grid():
    # 9! = 362880 permutations of a 3x3 grid is allowed, one more is not; 2x2 has only 24
    assert load_config(overrides=["spatial.permutations=362880"]).spatial.permutations == 362880
    assert load_config(overrides=["spatial.grid=2", "spatial.permutations=24"]).spatial.grid == 2
    with pytest.raises(ConfigError, match="spatial.permutations"):
        load_config(overrides=["spatial.grid=2", "spatial.permutations=25"])


def test_unknown_preset_argument():
    with pytest.raises(ConfigError, match="preset"):
        load_config(preset="gpu")


def test_unknown_keys_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  depth: 3\n")
    with pytest.raises(ConfigError, match="model.depth"):
        load_config(path)
    path.write_text("optimiser: sgd\n")
    with pytest.raises(ConfigError, match="optimiser"):
        load_config(path)


def test_wrong_types_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  steps: '100'\n")
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(path)
    path.write_text("train:\n  steps: yes\n")  # YAML 1.1 bool
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(path)


def test_invalid_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\ntrain: {lr: 0.1\nmodel: {}\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value) and "(line 3, column 6)" in str(info.value)


def test_yaml_top_level_list(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- seed\n- 3\n")
    with pytest.raises(ConfigError, match="mapping") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_empty_file_is_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == Config()


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_yaml_round_trip(tmp_path, preset):
    cfg = load_config(preset=preset, overrides=[
        "seed=5", "train.lr=0.003", "spatial.permutation_file=perms.npy",
        "model.channels_last=false", "data.images=folder:/data/imgs",
    ])
    path = tmp_path / "cfg.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_dict_round_trip(preset):
    cfg = load_config(preset=preset, overrides=["train.steps=77", "spatial.criterion=maxmean"])
    again = config_from_dict(to_dict(cfg))
    assert again == cfg
    assert again is not cfg


def test_config_from_dict_validates():
    values = to_dict(load_config())
    values["spatial"]["tile"] = 99
    with pytest.raises(ConfigError, match="spatial.tile"):
        config_from_dict(values)
    values = to_dict(load_config())
    values["extra"] = 1
    with pytest.raises(ConfigError, match="extra"):
        config_from_dict(values)


def test_reversal_twins_halve_the_temporal_limit():
    assert load_config(overrides=["temporal.permutations=360"]).temporal.permutations == 360
    with pytest.raises(ConfigError, match="exceeds the 360 permutations of 6 frames without "
                                          "reversal twins"):
        load_config(overrides=["temporal.permutations=361"])
    cfg = load_config(overrides=["temporal.permutations=720", "temporal.exclude_reversals=false"])
    assert cfg.temporal.permutations == 720


def naive_policy_updates(cfg, task: str) -> int:
    """The training loop's schedule walked step by step: an episode of `task` ends (and the
    policy is updated) only if it also started while the task trained."""
    from permrl.config import active_tasks
    from permrl.train import policy_phase

    updates, in_episode = 0, False
    for step in range(cfg.train.steps):
        phase = policy_phase(cfg, step + 1)
        if task not in active_tasks(cfg, step):
            continue
        if phase == "episode_start":
            in_episode = True
        elif phase == "episode_end" and in_episode:
            updates, in_episode = updates + 1, False
    return updates


@pytest.mark.parametrize("steps", [1, 10, 20, 24, 25, 26, 49, 50, 51, 97])
@pytest.mark.parametrize("switch", [0, 1, 19, 20, 21, 33])
def test_policy_updates_equal_the_loop_walked_step_by_step(steps, switch):
    cfg = load_config(overrides=["tasks=[spatial, temporal]", f"train.steps={steps}",
                                 "cycle.sgd_steps=20", "cycle.episode_batches=5"])
    if switch >= steps:
        return
    # Set after loading: the check under test (in validate) would refuse the cycles that
    # never complete, and those are the cases to compare.
    cfg.train.serial_switch, cfg.policy = switch, "reinforce"
    for task in ("spatial", "temporal"):
        assert policy_updates(cfg, task) == naive_policy_updates(cfg, task), (steps, switch, task)


@pytest.mark.parametrize("overrides, culprit", [
    (["train.steps=60", "cycle.sgd_steps=100"], "train.steps = 60"),
    (["train.steps=104", "cycle.sgd_steps=100", "cycle.episode_batches=5"],
     "= 105 steps"),
    (["tasks=[spatial, temporal]", "train.steps=300", "train.serial_switch=250",
      "cycle.sgd_steps=100"], "temporal trains 50 steps"),
])
def test_a_policy_that_would_never_act_is_named_with_its_keys(overrides, culprit):
    message = idle_policy(load_config(overrides=["policy=reinforce", *overrides]))
    assert "never acts" in message and culprit in message and "cycle.sgd_steps" in message
    assert idle_policy(load_config(overrides=["policy=uniform", *overrides])) is None
    assert idle_policy(load_config(overrides=["policy=reinforce", "train.steps=105",
                                              "cycle.sgd_steps=100"])) is None


def test_the_example_config_files_load():
    from pathlib import Path

    examples = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))
    assert examples
    configs = {path.name: load_config(path) for path in examples}  # every one loads
    own = configs["own-data.yaml"]
    assert own.policy == "reinforce" and own.tasks == ["spatial", "temporal"]


def test_the_keys_moved_to_cycle_keep_working_with_a_notice(tmp_path, capsys):
    """permrl 0.2's reinforce.sgd_steps (episode_batches, groups, episode_actions, reward_*)
    are cycle.* now: an override or a file with the old name gives the same config and one
    line naming the key; a stored config (a checkpoint's) is read silently."""
    new = load_config(overrides=["cycle.sgd_steps=7", "cycle.groups=4", "reinforce.lr=0.5"])
    old = load_config(overrides=["reinforce.sgd_steps=7", "reinforce.groups=4",
                                 "reinforce.lr=0.5"])
    assert to_dict(old) == to_dict(new)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"permrl: notice: --set reinforce.{k}={v}: reinforce.{k} is now cycle.{k} "
                   "(the old name works until permrl 0.4)" for k, v in (("sgd_steps", 7),
                                                                        ("groups", 4))]
    path = tmp_path / "old.yaml"
    path.write_text("reinforce:\n  episode_batches: 3\n  lr: 0.5\ncycle:\n  groups: 4\n")
    assert load_config(path).cycle.episode_batches == 3 and load_config(path).cycle.groups == 4
    assert "old.yaml: reinforce.episode_batches is now cycle.episode_batches" in (
        capsys.readouterr().err)
    stored = to_dict(new)
    stored["reinforce"] |= stored.pop("cycle")  # the 0.2 layout of a checkpoint's config
    assert to_dict(config_from_dict(stored)) == to_dict(new)
    assert capsys.readouterr().err == ""
