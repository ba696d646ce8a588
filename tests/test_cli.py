"""The command line: commands listed, user errors are one line with status 2, outputs exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tiny_config import tiny_overrides

from permrl.cli import main
from permrl.config import load_config
from permrl.permutations import hamming_stats, load_permutations

TINY = [a for o in tiny_overrides(
    "spatial.permutations=6", "train.steps=2", "data.images=dead-leaves?count=30&size=120",
    "spatial.grid=3", "train.warmup_steps=100", "cycle.groups=10"
) for a in ("--set", o)]


STARTUP = re.compile(r"permrl: (spatial|temporal): \d+ permutations; opening ")


def one_error_line(capsys) -> str:
    """The one error line; before it only the start-up line of what was being opened."""
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not STARTUP.match(line)]
    assert len(err) == 1 and err[0].startswith("permrl: error: "), err
    return err[0]


def labelled_folder(root, classes=("a", "b", "c"), per_class=4):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / c / f"{i}.png")
    return root


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "permrl", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("train", "permutations", "eval", "demo"):
        assert command in out


@pytest.mark.parametrize("override, key", [
    ("train.lrx=1", "train.lrx"),
    ("spatial.tile=40", "spatial.tile"),
    ("train.steps=-3", "train.steps"),
    ("data.images=nosuchkind:/x", "nosuchkind"),
    ("data.images=folder:/does/not/exist", "/does/not/exist"),
])
def test_train_user_errors_are_one_line(tmp_path, capsys, override, key):
    code = main(["train", "--out", str(tmp_path / "run"), *TINY, "--set", override])
    assert code == 2
    assert key in one_error_line(capsys)
    assert not (tmp_path / "run").exists()  # a failed command leaves no empty --out folder


def test_train_then_eval_knn(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    assert "held-out puzzle accuracy" in capsys.readouterr().out
    gallery = labelled_folder(tmp_path / "gallery")
    queries = labelled_folder(tmp_path / "queries", per_class=2)
    out = tmp_path / "knn.json"
    argv = ["eval", "knn", "--checkpoint", str(run / "checkpoint.pt"),
            "--train", f"folder:{gallery}", "--test", f"folder:{queries}", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert {"top1", "top5", "top10", "queries", "gallery", "layer", "bn_stats"} <= set(result)
    assert result["queries"] == 6 and result["gallery"] == 12 and result["bn_stats"] == "gallery"
    assert "top20" not in result and 20 in result["skipped_k"]  # k > gallery: left out
    top1 = f"Top1 {100 * result['top1']:.1f}%"
    assert top1 in capsys.readouterr().err  # a short table for the reader, JSON for scripts
    assert result["precision"] == "float32"
    assert main(argv + ["--random-init"]) == 0
    assert json.loads(out.read_text())["network"].startswith("random-init")
    assert main(argv + ["--precision", "bf16"]) == 0
    assert json.loads(out.read_text())["precision"] == "bf16"
    # Gallery = queries: said, since Top-1 is then 1.0 by construction.
    capsys.readouterr()
    same = ["eval", "knn", "--random-init", "--train", f"folder:{gallery}", "--test",
            f"folder:{gallery}", "--out", str(out)]
    assert main(same) == 0
    assert "same source" in capsys.readouterr().err
    # Without --train/--test the config's eval.knn_train and eval.knn_test are used.
    assert main(["eval", "knn", "--random-init", "--out", str(out)]) == 0
    cfg = load_config()
    assert json.loads(out.read_text())["train_source"] == cfg.eval.knn_train
    # Training again into the same directory needs --resume or --force.
    capsys.readouterr()
    assert main(["train", "--out", str(run), *TINY]) == 2
    assert "--resume" in one_error_line(capsys)


def test_eval_knn_user_errors(tmp_path, capsys):
    gallery = labelled_folder(tmp_path / "g")
    assert main(["eval", "knn", "--train", f"folder:{gallery}", "--test",
                 f"folder:{gallery}"]) == 2
    assert "--random-init" in one_error_line(capsys)
    assert main(["eval", "knn", "--checkpoint", str(tmp_path / "missing.pt"), "--train",
                 f"folder:{gallery}", "--test", f"folder:{gallery}"]) == 2
    assert "missing.pt" in one_error_line(capsys)
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(unlabelled / "x.png")
    assert main(["eval", "knn", "--random-init", "--train", f"folder:{unlabelled}",
                 "--test", f"folder:{gallery}"]) == 2
    one_error_line(capsys)


def test_permutations_command(tmp_path, capsys):
    out = tmp_path / "perms.npy"
    assert main(["permutations", "--count", "20", "--size", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    perms = load_permutations(out)
    stats = hamming_stats(perms)
    assert perms.shape == (20, 5)
    assert f"min Hamming distance {stats['min']}" in printed and "s;" in printed
    assert main(["permutations", "--count", "200", "--size", "5"]) == 2  # > 5! = 120
    one_error_line(capsys)


def test_export_command(tmp_path, capsys):
    out = tmp_path / "caffenet.pt"
    assert main(["export", "--random-init", "--format", "state-dict", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.exists() and result["max_abs_diff"] <= 1e-4
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(out)]) == 2
    assert "none.pt" in one_error_line(capsys)


@pytest.mark.parametrize("argv, needle", [
    (["train", "--out", "FILE", "--set", "train.steps=1"], "is a file"),
    (["train", "--out", "DIR/run", "--set", "seed=-1"], "seed"),
    (["permutations", "--count", "5", "--size", "4", "--out", "/no/such/dir/p.npy"], "/no/such"),
    (["ablate", "--variants", ",", "--out", "DIR/abl"], "--variants"),
    (["report", "DIR"], "error: DIR is not a run, ablation or demo directory"),
])
def test_more_user_errors_are_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "file").write_text("not a directory")
    argv = [a.replace("FILE", str(tmp_path / "file")).replace("DIR", str(tmp_path))
            for a in argv]
    assert main(argv) == 2
    assert needle.replace("DIR", str(tmp_path)) in one_error_line(capsys)


def test_eval_probe_and_finetune_commands(tmp_path, capsys):
    train_dir = labelled_folder(tmp_path / "train", per_class=6)
    test_dir = labelled_folder(tmp_path / "test", per_class=2)
    common = ["--random-init", "--train", f"folder:{train_dir}", "--test", f"folder:{test_dir}"]
    out = tmp_path / "probe.json"
    assert main(["eval", "probe", *common, "--epochs", "2", "--cache", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    probe = json.loads(out.read_text())
    assert probe["test_items"] == 6 and 0 <= probe["test_accuracy"] <= 1
    assert list((tmp_path / "cache").glob("features-*.pt"))  # extracted once, cached
    out = tmp_path / "ft.json"
    assert main(["eval", "finetune", *common, "--steps", "2", "--batch-size", "4",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["test_items"] == 6
    capsys.readouterr()
    assert main(["eval", "probe", *common, "--layer", "fc9"]) == 2
    assert "fc9" in one_error_line(capsys)


def test_version_and_config_show_round_trip(tmp_path, capsys):
    import permrl

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"permrl {permrl.__version__}"
    assert main(["config", "--show", "--preset", "paper", "--set", "train.steps=7"]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    cfg = load_config(shown)  # what --show prints is a config file that gives the same config
    assert cfg == load_config(preset="paper", overrides=["train.steps=7"])


def test_config_reference_covers_every_key_and_docs_config_md_is_its_output():
    from pathlib import Path

    from permrl.config import flat_keys
    from permrl.config_reference import reference

    text = reference()
    for key in flat_keys(load_config()):
        assert f"| `{key}` |" in text, key
    docs = Path(__file__).parents[1] / "docs/config.md"
    assert docs.read_text() == text + "\n", "regenerate: permrl config --reference > docs/config.md"
