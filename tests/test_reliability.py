"""Work is never lost: kill -9 and resume is exact, SIGTERM stops cleanly, checkpoints are
checksummed with fallback, a full disk or a NaN never overwrites a good checkpoint."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_config import tiny_overrides

import permrl.checkpoint as checkpoint_module
import permrl.train as train_module
from permrl.checkpoint import CheckpointError, load_checkpoint, step_files
from permrl.config import load_config
from permrl.train import RunError, train

TINY = tiny_overrides(
    "data.images=dead-leaves?count=60&size=80", "data.workers=1", "model.dropout=0.3",
    "train.log_every=1", "train.val_every=5", "policy=reinforce", "cycle.sgd_steps=3",
    "cycle.episode_batches=2"
)


def command(run_dir, steps: int, *extra: str) -> list[str]:
    sets = [a for o in TINY + [f"train.steps={steps}", "train.checkpoint_every=2", *extra]
            for a in ("--set", o)]
    return [sys.executable, "-m", "permrl", "train", "--out", str(run_dir), *sets]


def model_of(run_dir):
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def metrics_of(run_dir):
    import json

    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("samples_per_s", None)
        out.append(record)
    return out


# Runs `permrl train` and SIGKILLs itself (kill -9: no handler, no cleanup) at a named moment,
# so that where the kill lands is fixed by the run's own events, not by the machine's speed.
KILL_AT = textwrap.dedent("""
    import os, signal, sys
    import permrl.bookkeeping, permrl.checkpoint, permrl.policy.samplers
    where, at = sys.argv[1], int(sys.argv[2])

    def kill_before(owner, name, now):
        original = getattr(owner, name)
        def wrapped(*args):
            if now(*args):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args)
        setattr(owner, name, wrapped)

    if where == "sgd":  # step `at`: loss and gradients computed, the optimiser not yet stepped
        kill_before(permrl.bookkeeping.StepGuard, "step", lambda self, ok, step: step == at)
    elif where == "checkpoint":  # checkpoint-<at>.pt written, checkpoint.pt still the previous
        kill_before(permrl.checkpoint, "_link_atomic", lambda new, link: f"{at:08d}" in new.name)
    elif where == "reward":  # the episode ending at step `at`: its state computed, pi not updated
        kill_before(permrl.policy.samplers.GroupSampler, "reward",
                    lambda _, it, *state_and_twin: it == at)
    from permrl.cli import main
    sys.exit(main(sys.argv[3:]))
""")


RAISE_AT = textwrap.dedent("""
    import sys
    import permrl.bookkeeping
    at, step = int(sys.argv[1]), permrl.bookkeeping.StepGuard.step

    def failing(self, ok, done):
        if done == at:
            raise RuntimeError("a bug at step %d" % at)
        return step(self, ok, done)

    permrl.bookkeeping.StepGuard.step = failing
    from permrl.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_an_unexpected_exception_with_workers_ends_the_process(tmp_path):
    """A bug (not a user error) raised inside the loop while a DataLoader worker runs: the
    traceback is printed and the process exits. The workers ignore SIGTERM, so without an
    explicit shut-down the interpreter's exit would wait for them forever. (The timeout only
    turns a hang into a failure.)"""
    script = tmp_path / "raise_at.py"
    script.write_text(RAISE_AT)
    args = command(tmp_path / "run", 8)[3:]
    run = subprocess.run([sys.executable, str(script), "3", *args], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 1 and "RuntimeError: a bug at step 3" in run.stderr


@pytest.mark.slow
def test_kill_minus_nine_at_several_moments_then_resume_is_exact(tmp_path):
    """kill -9 inside an SGD step before the first checkpoint, while a checkpoint is being
    written, in the middle of a policy episode (at its reward), and after the last full cycle;
    each time the run is restarted as a user would, and the end is bitwise the uninterrupted
    run's: weights, metrics, the policy's error history. (Cycles of N + K = 3 + 2 steps: the
    episodes end at 5, 10, 15, 20; checkpoints every 2 steps.)"""
    steps = 24
    subprocess.run(command(tmp_path / "ref", steps), check=True, capture_output=True)
    run = tmp_path / "run"
    script = tmp_path / "kill_at.py"
    script.write_text(KILL_AT)
    restart: list[str] = []
    for where, at, checkpoint_after in [("sgd", 1, None), ("checkpoint", 6, 4),
                                        ("reward", 15, 14), ("sgd", 21, 20)]:
        args = command(run, steps)[3:] + restart  # after `python -m permrl`
        killed = subprocess.run([sys.executable, str(script), where, str(at), *args],
                                capture_output=True, text=True)
        assert killed.returncode == -signal.SIGKILL, (where, at, killed.stderr[-2000:])
        if checkpoint_after is None:  # killed before any checkpoint: the user starts again
            assert not (run / "checkpoint.pt").exists()
            restart = ["--force"]
        else:
            assert load_checkpoint(run / "checkpoint.pt")["step"] == checkpoint_after
            restart = ["--resume"]
        if where == "checkpoint":  # the new step file is complete but not yet the latest
            assert (run / f"checkpoint-{at:08d}.pt").exists()
    done = subprocess.run(command(run, steps) + restart, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = model_of(tmp_path / "ref"), model_of(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics_of(tmp_path / "ref") == metrics_of(run)
    ref_policy = load_checkpoint(tmp_path / "ref/checkpoint.pt")["sampler"]["spatial"]
    run_policy = load_checkpoint(run / "checkpoint.pt")["sampler"]["spatial"]
    assert ref_policy["errors"] == run_policy["errors"]


def wait_for_validation(proc: subprocess.Popen) -> None:
    """Read the run's stderr until its first held-out validation line (step 5 in TINY): the
    loop, and with it the signal handlers, is running. Blocks on the pipe, never on a clock."""
    for line in proc.stderr:
        if "held-out puzzle accuracy" in line:
            return
    raise AssertionError(f"the run ended before its first validation (exit {proc.wait()})")


def test_sigterm_finishes_the_step_checkpoints_and_exits_143(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(command(run, 5000, "train.checkpoint_every=100000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_validation(proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # so `train && eval` stops
    assert "SIGTERM" in err and "--resume" in err
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    logged = [r["step"] for r in metrics_of(run) if "lr" in r]
    assert 0 < step < 5000 and logged[-1] == step


def test_sigterm_to_the_process_group_spares_the_workers_and_resume_continues(tmp_path):
    """What SLURM's scancel, Kubernetes and `timeout` do: the signal reaches the DataLoader
    workers too (data.workers=1 in TINY). The run must still checkpoint, without a traceback."""
    run = tmp_path / "run"
    proc = subprocess.Popen(command(run, 5000, "train.checkpoint_every=100000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as under SLURM
    wait_for_validation(proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "SIGTERM" in err
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert 0 < step < 5000
    done = subprocess.run(command(run, step + 2, "train.checkpoint_every=100000") + ["--resume"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run / "checkpoint.pt")["step"] == step + 2


def tiny(*extra: str):
    return load_config(overrides=[o.replace("data.workers=1", "data.workers=0") for o in TINY]
                       + list(extra))


def poison_loss(monkeypatch, at_call: int, factor: float) -> None:
    """Make the `at_call`-th training loss non-finite (multiplied by nan or inf)."""
    original = train_module.F.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, target, **kwargs):
        calls["n"] += 1
        loss = original(logits, target, **kwargs)
        return loss * factor if calls["n"] == at_call else loss

    monkeypatch.setattr(train_module.F, "cross_entropy", poisoned)


def test_a_nan_loss_stops_without_touching_the_last_checkpoint(tmp_path, monkeypatch):
    poison_loss(monkeypatch, at_call=3, factor=float("nan"))
    with pytest.raises(RunError, match="non-finite loss or gradient at step 3"):
        train(tiny("train.steps=6", "train.checkpoint_every=1"), tmp_path / "run",
              progress=False)
    ckpt = load_checkpoint(tmp_path / "run/checkpoint.pt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_lower_lr_skips_the_step_and_continues(tmp_path, monkeypatch):
    poison_loss(monkeypatch, at_call=3, factor=float("inf"))
    cfg = tiny("train.steps=5", "train.nan_policy=lower_lr", "train.schedule=constant")
    train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run/checkpoint.pt")
    assert ckpt["scheduler"]["base_lrs"] == [cfg.train.lr * 0.5] * 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_corrupt_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys):
    train(tiny("train.steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=2"),
          tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert [s for s, _ in step_files(run)] == [6, 4]  # the last two kept
    # checkpoint.pt is a link to the newest step file, not a second copy of it.
    assert os.readlink(run / "checkpoint.pt") == "checkpoint-00000006.pt"
    data = bytearray((run / "checkpoint-00000006.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the checksum catches it
    (run / "checkpoint-00000006.pt").write_bytes(bytes(data))
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4
    assert "does not match its checksum; using checkpoint-00000004.pt" in capsys.readouterr().err
    (run / "checkpoint-00000006.pt").unlink()  # a dangling link falls back too
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4
    for _, p in step_files(run):
        p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="missing file, and no intact step checkpoint"):
        load_checkpoint(run / "checkpoint.pt")


def test_disk_full_during_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up while the second checkpoint (step 4) is written
        if "checkpoint-00000004" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint"):
        train(tiny("train.steps=4", "train.checkpoint_every=2"), tmp_path / "run",
              progress=False)
    monkeypatch.setattr(checkpoint_module.os, "fsync", real_fsync)
    assert load_checkpoint(tmp_path / "run/checkpoint.pt")["step"] == 2
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_serial_s_then_t_with_the_policy_switching_mid_cycle(tmp_path):
    # N + K = 5 and the switch at 4: the temporal task joins inside a cycle.
    cfg = tiny("tasks=[spatial, temporal]", "data.videos=demo-videos?count=20&frames=12&size=40",
               "temporal.frames=4", "temporal.permutations=12", "temporal.stride_max=2",
               "train.steps=16", "train.serial_switch=4", "model.lstm=16")
    train(cfg, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run/checkpoint.pt")["sampler"]["temporal"]["updates"] >= 1


def test_resume_applies_a_changed_learning_rate_and_refuses_a_changed_optimizer(tmp_path):
    run = tmp_path / "run"
    train(tiny("train.steps=4", "train.schedule=constant"), run, progress=False, stop_at=2)
    train(tiny("train.steps=4", "train.schedule=constant", "train.lr=0.0005"), run,
          resume=True, progress=False)
    assert load_checkpoint(run / "checkpoint.pt")["scheduler"]["base_lrs"] == [0.0005] * 2
    with pytest.raises(RunError, match="train.optimizer cannot change"):
        train(tiny("train.steps=6", "train.optimizer=sgd"), run, resume=True, progress=False)


def test_force_removes_the_previous_runs_checkpoints_and_a_torn_metrics_line_is_dropped(
        tmp_path):
    run = tmp_path / "run"
    train(tiny("train.steps=6", "train.checkpoint_every=2"), run, progress=False)
    train(tiny("train.steps=2", "train.checkpoint_every=2"), run, progress=False, force=True)
    assert [s for s, _ in step_files(run)] == [2]
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "spatial_lo')  # a crash in the middle of a write
    train(tiny("train.steps=3", "train.checkpoint_every=2"), run, resume=True, progress=False)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3


def test_too_many_unreadable_images_stop_the_run_with_a_clear_error(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(
            folder / f"good{i}.png")
    for i in range(10):
        (folder / f"x{i}_bad.jpg").write_bytes(b"\xff\xd8 truncated")
    cfg = tiny("train.steps=40", f"data.images=folder:{folder}", "data.max_bad_fraction=0.1")
    with pytest.raises(RunError, match=r"unreadable \(first: .*bad.*max_bad_fraction=0.1"):
        train(cfg, tmp_path / "run", progress=False)
    # Under the limit: counted, reported, and the run finishes.
    result = train(tiny("train.steps=4", f"data.images=folder:{folder}",
                        "data.max_bad_fraction=0.5"), tmp_path / "ok", progress=False)
    assert result.skipped > 0


def test_symlink_loops_are_not_followed(tmp_path):
    import numpy as np
    from PIL import Image

    from permrl.data.sources import open_source
    from permrl.data.video_sources import open_video_source

    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "sub" / "a.png")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "self").symlink_to(root / "sub", target_is_directory=True)
    assert len(open_source(f"folder:{root}")) == 1
    with pytest.raises(Exception, match="no video|empty|No video"):
        open_video_source(f"videos:{root}")


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: permissions do not stop reads")
def test_an_unreadable_file_is_skipped(tmp_path):
    import numpy as np
    from PIL import Image

    from permrl.data.sources import open_source

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "b.png").chmod(0)
    source = open_source(f"folder:{tmp_path}")
    assert source.load(0) is not None and source.load(1) is None


class _Payload:
    """What a crafted checkpoint could carry: unpickling it would create a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_is_refused_and_its_code_never_runs(tmp_path, capsys):
    from permrl.cli import main

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "step": 1, "x": _Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="holds more than weights and plain data"):
        load_checkpoint(evil)
    assert main(["eval", "knn", "--checkpoint", str(evil)]) == 2
    assert "refused, nothing in it was run" in capsys.readouterr().err
    assert not marker.exists()


def test_checkpoints_round_trip_numpy_arrays_and_load_weights_only(tmp_path):
    import numpy as np

    from permrl.checkpoint import save_checkpoint

    state = {"model": {"w": torch.ones(2)}, "config": {"seed": 0}, "step": 3,
             "permutations": {"spatial": np.arange(6, dtype=np.int64).reshape(2, 3)},
             "sampler": {"errors": [(1, np.float32(0.5)), (2, np.array([0.1, 0.2]))]}}
    save_checkpoint(state, tmp_path, 3)
    torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # plain data only
    back = load_checkpoint(tmp_path / "checkpoint.pt")
    np.testing.assert_array_equal(back["permutations"]["spatial"], state["permutations"]["spatial"])
    assert back["permutations"]["spatial"].dtype == np.int64
    assert back["sampler"]["errors"][0] == (1, 0.5)
    np.testing.assert_array_equal(back["sampler"]["errors"][1][1], [0.1, 0.2])
