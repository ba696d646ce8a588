"""Temporal task and the training modes T, S+T and S&T (design §4), on demo clips and real files."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from tiny_config import tiny_overrides

from permrl.checkpoint import load_checkpoint
from permrl.config import load_config
from permrl.evaluate.run import knn, load_trunk
from permrl.train import RunError, train

TINY = tiny_overrides(
    "model.dropout=0.0", "spatial.permutations=4", "temporal.permutations=5", "train.log_every=1",
    "train.schedule=constant", "cycle.groups=10"
)


def tiny(*extra: str):
    return load_config(overrides=TINY + list(extra))


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_temporal_only(tmp_path):
    result = train(tiny("tasks=[temporal]", "train.steps=3"), tmp_path / "t", progress=False)
    ckpt = load_checkpoint(tmp_path / "t/checkpoint.pt")
    assert set(ckpt["permutations"]) == {"temporal"}
    assert ckpt["permutations"]["temporal"].shape == (5, 4)
    assert set(result.val_accuracy) == {"temporal"}
    assert not any(k.startswith("heads.spatial") for k in ckpt["model"])
    steps = [r for r in records(tmp_path / "t") if "temporal_loss" in r]
    assert len(steps) == 3 and all("spatial_loss" not in r for r in steps)


def test_joint_s_plus_t_trains_both_tasks_every_step(tmp_path):
    train(tiny("tasks=[spatial, temporal]", "train.steps=3"), tmp_path / "st", progress=False)
    steps = [r for r in records(tmp_path / "st") if "lr" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all("spatial_loss" in r and "temporal_loss" in r for r in steps)
    val = [r for r in records(tmp_path / "st") if "spatial_val_accuracy" in r]
    assert len(val) == 1 and "temporal_val_accuracy" in val[0]


def test_s_plus_t_loss_is_the_sum_of_both(tmp_path, monkeypatch):
    """One backward of the summed loss: the update equals the one from both gradients."""
    import permrl.train as train_module

    seen = []
    original = train_module.F.cross_entropy

    def spy(logits, target, **kwargs):
        loss = original(logits, target, **kwargs)
        seen.append(original(logits, target).detach())  # the task's mean loss
        return loss

    backward_losses = []
    original_backward = torch.Tensor.backward

    def spy_backward(self, *args, **kwargs):
        backward_losses.append(self.detach())
        return original_backward(self, *args, **kwargs)

    monkeypatch.setattr(train_module.F, "cross_entropy", spy)
    monkeypatch.setattr(torch.Tensor, "backward", spy_backward)
    train(tiny("tasks=[spatial, temporal]", "train.steps=2"), tmp_path / "st", progress=False)
    assert len(backward_losses) == 2 and len(seen) == 4  # one backward per step, two losses
    for step in range(2):
        spatial, temporal = seen[2 * step], seen[2 * step + 1]
        torch.testing.assert_close(backward_losses[step], spatial + temporal)


def test_serial_s_and_t_hands_the_spatial_weights_to_the_temporal_task(tmp_path):
    switch = 3
    serial = tiny("tasks=[spatial, temporal]", "train.steps=5", f"train.serial_switch={switch}")
    train(serial, tmp_path / "serial", progress=False, stop_at=switch)
    handed_over = load_checkpoint(tmp_path / "serial/checkpoint.pt")["model"]
    train(serial, tmp_path / "serial", resume=True, progress=False)
    final = load_checkpoint(tmp_path / "serial/checkpoint.pt")["model"]
    # The first phase is exactly a spatial-only run of `switch` steps.
    train(tiny("tasks=[spatial]", f"train.steps={switch}"), tmp_path / "s", progress=False)
    spatial_only = load_checkpoint(tmp_path / "s/checkpoint.pt")["model"]
    for name, value in spatial_only.items():
        assert torch.equal(handed_over[name], value), name
    # Then only the temporal task trains: its head and the trunk move, the spatial head not.
    spatial_head = [k for k in final if k.startswith("heads.spatial")]
    assert spatial_head and all(torch.equal(final[k], handed_over[k]) for k in spatial_head)
    assert not torch.equal(final["trunk.conv1.conv.weight"], handed_over["trunk.conv1.conv.weight"])
    assert not torch.equal(final["heads.temporal.classifier.weight"],
                           handed_over["heads.temporal.classifier.weight"])
    modes = [("spatial_loss" in r, "temporal_loss" in r)
             for r in records(tmp_path / "serial") if "lr" in r]
    assert modes == [(True, False)] * switch + [(False, True)] * 2


def test_s_plus_t_resume_is_exact(tmp_path):
    cfg = tiny("tasks=[spatial, temporal]", "train.steps=4", "model.dropout=0.3")
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_at=2)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_checkpoint(tmp_path / "full/checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "split/checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def write_video(path, frames: int, seed: int) -> None:
    """A small mpeg4 .avi: a bright square drifting right over noise."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        background = rng.integers(0, 120, (48, 64, 3), dtype=np.uint8)
        for t in range(frames):
            img = background.copy()
            img[16:32, 2 * t : 2 * t + 16] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_trains_on_a_folder_of_real_videos_and_counts_bad_ones(tmp_path, capfd):
    root = tmp_path / "videos"
    for i in range(10):
        write_video(root / ("left" if i % 2 else "right") / f"v{i}.avi", 16, i)
    write_video(root / "left" / "short.avi", 2, 99)  # shorter than the clip
    (root / "right" / "corrupt.avi").write_bytes(b"RIFF not really a video")
    cfg = tiny("tasks=[temporal]", "train.steps=5", f"data.videos=videos:{root}",
               "train.val_size=3", "policy=reinforce", "cycle.sgd_steps=1",
               "cycle.episode_batches=1", "cycle.groups=3")  # T+P
    result = train(cfg, tmp_path / "run", progress=False)
    err = capfd.readouterr().err
    assert result.skipped >= 1 and "skipped" in err
    assert [r["step"] for r in records(tmp_path / "run") if "episode" in r] == [2, 4]
    # Video retrieval on the same files: frame level (paper) and video level.
    trunk, cfg2, _ = load_trunk(tmp_path / "run/checkpoint.pt")
    res = knn(trunk, cfg2, f"videos:{root}", f"videos:{root}")
    assert res["level"] == "frame" and res["frames_per_video"] == 10
    # The corrupt file drops out; the 2-frame one is fine for retrieval (frames repeat).
    assert res["video_level"]["queries"] == 11
    assert res["queries"] == 110 and res["skipped"] == 20  # 10 frames, in gallery and queries


def test_a_source_without_usable_videos_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="empty|no video"):
        train(tiny("tasks=[temporal]", "train.steps=1", f"data.videos=videos:{empty}"),
              tmp_path / "run", progress=False)
    few = tmp_path / "few"
    write_video(few / "a.avi", 16, 0)
    with pytest.raises(RunError, match="val_size"):
        train(tiny("tasks=[temporal]", "train.steps=1", f"data.videos=videos:{few}"),
              tmp_path / "run2", progress=False)


def test_a_handful_of_videos_trains_with_the_default_val_size(tmp_path, capsys):
    """train.val_size=0 (the default) holds out 2 of 5 clips, says so, and trains on 3."""
    result = train(tiny("tasks=[temporal]", "train.steps=2", "train.val_size=0",
                        "data.videos=demo-videos?count=5&frames=12&size=40"),
                   tmp_path / "run", progress=False)
    assert "X_val (temporal): 2 of 5 videos held out" in capsys.readouterr().err
    val = [r for r in records(tmp_path / "run") if "temporal_val_accuracy" in r]
    assert val[-1]["temporal_val_samples"] == 2 and "temporal" in result.val_accuracy
    # Psi_T holds no reversal twins, so "up to reversal" is the plain accuracy.
    assert val[-1]["temporal_val_accuracy_up_to_reversal"] == pytest.approx(
        val[-1]["temporal_val_accuracy"], abs=1e-12)


def test_accuracy_up_to_reversal_counts_twins(tmp_path):
    """With twins allowed in Psi_T, the logged up-to-reversal accuracy is the share of X_val
    pairs whose prediction is the permutation or its twin, recomputed here from the model."""
    from permrl.models.build import build_model
    from permrl.permutations import reversal_twins
    from permrl.policy.state import naive_state

    cfg = tiny("tasks=[temporal]", "train.steps=2", "temporal.permutations=24",
               "temporal.exclude_reversals=false")
    train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run/checkpoint.pt")
    perms = ckpt["permutations"]["temporal"]
    assert (reversal_twins(perms) >= 0).all()  # all 24 of 4!: every twin is in Psi_T
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    from permrl.data.batches import split_validation, validation_clips
    from permrl.data.sources import SkipCounter
    from permrl.data.video_sources import open_video_source

    source = open_video_source(cfg.data.videos)
    _, val_idx = split_validation(len(source), cfg.train.val_size, cfg.seed, "video")
    t = cfg.temporal
    parts = validation_clips(source, val_idx, frames=t.frames, size=t.frame_size,
                             stride_min=t.stride_min, stride_max=t.stride_max,
                             crop_min=t.crop_min, skips=SkipCounter())
    state = naive_state(model, "temporal", parts, torch.from_numpy(perms))
    twin = 3 - torch.from_numpy(perms)  # u - 1 - psi
    hits = 0
    for i in range(len(perms)):
        for v in range(parts.shape[0]):
            guess = torch.from_numpy(perms)[state.predicted[i, v]]
            hits += bool(state.predicted[i, v] == i) or bool(torch.equal(guess, twin[i]))
    logged = [r for r in records(tmp_path / "run") if "temporal_val_accuracy" in r][-1]
    assert logged["temporal_val_accuracy_up_to_reversal"] == pytest.approx(
        hits / (len(perms) * parts.shape[0]))
    assert logged["temporal_val_accuracy"] == pytest.approx(1 - state.error)


def test_frames_have_their_own_size():
    """temporal.frame_size sizes the frames and the temporal fc6; tiles keep spatial.tile."""
    from permrl.models.build import build_model

    for size, cells in ((32, 1), (48, 4), (64, 9)):  # pool5 1x1, 2x2, 3x3 at conv1 stride 2
        model = build_model(tiny("tasks=[spatial, temporal]", f"temporal.frame_size={size}"))
        channels = model.trunk.out_channels
        assert model.heads["temporal"].fc6.fc.in_features == channels * cells
        assert model.heads["spatial"].fc6.fc.in_features == channels  # 32 px tiles: 1x1
        with torch.no_grad():
            model.eval()
            assert model.logits("temporal", torch.rand(2, 4, 3, size, size)).shape == (2, 5)
