"""Command line: `permrl train | permutations | eval knn|probe|finetune | ablate | fig4 | report |
export | demo | landscape | prepare`.

A user error (bad config, missing file, unreadable source) exits with status 2 and one line on
stderr, never a traceback.

Why this long: one parser and one short command function per subcommand (eleven of them);
splitting them would scatter the command line a user reads as one page.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

from permrl import __version__
from permrl.config import PRESETS, ConfigError, load_config, to_yaml
from permrl.errors import UserError
from permrl.evaluate.knn import BN_STATS, PRECISIONS
from permrl.run_dir import Interrupted, RunError


def cmd_train(args: argparse.Namespace) -> int:
    from permrl.train import train

    overrides = (args.set or []) + ([f"train.device={args.device}"] if args.device else [])
    config_file = args.config
    if args.resume and config_file is None and (Path(args.out) / "config.yaml").is_file():
        config_file = str(Path(args.out) / "config.yaml")  # --resume: the run's own config
    cfg = load_config(config_file, args.preset, overrides)
    result = train(cfg, args.out, resume=args.resume, force=args.force)
    if result.interrupted:  # checkpointed, and train said so
        if result.rank == 0:
            print("permrl: continue with the same command and --resume", file=sys.stderr)
        return 128 + result.stop_signal
    if result.rank != 0:  # under torchrun rank 0 speaks for the run
        return 0
    accuracy = ", ".join(f"{task} {acc:.3f}" for task, acc in result.val_accuracy.items())
    loss = f"final loss {result.final_loss:.4f}, " if math.isfinite(result.final_loss) else ""
    print(f"trained {result.steps} steps: {loss}held-out puzzle accuracy {accuracy}; checkpoint "
          f"{result.run_dir / 'checkpoint.pt'}")
    return 0


def cmd_permutations(args: argparse.Namespace) -> int:
    from permrl.permutations import (
        hamming_stats,
        reversal_twins,
        save_permutations,
        select_permutations,
    )

    t0 = time.perf_counter()
    try:
        perms = select_permutations(args.count, args.size, seed=args.seed,
                                    criterion=args.criterion,
                                    include_identity=args.include_identity,
                                    exclude_reversals=args.exclude_reversals)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    seconds = time.perf_counter() - t0
    stats = hamming_stats(perms)
    if args.out:
        save_permutations(args.out, perms, seed=args.seed, criterion=args.criterion)
    twins = int((reversal_twins(perms) >= 0).sum())
    print(f"{len(perms)} permutations of {args.size} ({args.criterion}, seed {args.seed}): "
          f"min Hamming distance {stats['min']}, mean {stats['mean']:.3f}, "
          f"{twins} with their reversal twin in the set, "
          f"{seconds:.2f} s" + (f"; saved to {args.out}" if args.out else ""))
    return 0


def cmd_eval_knn(args: argparse.Namespace) -> int:
    from permrl.evaluate.run import knn_from_checkpoint

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = knn_from_checkpoint(
            args.checkpoint, args.train, args.test, layer=args.layer, bn_stats=args.bn_stats,
            random_init=args.random_init, preset=args.preset, precision=args.precision,
        )
    for w in caught:
        print(f"permrl: warning: {w.message}", file=sys.stderr)
    ks = [k for k in ("top1", "top5", "top10", "top20", "top50") if k in result]
    print(f"kNN retrieval, {result['layer']}, {result['queries']} queries vs {result['gallery']} "
          f"gallery items ({result['test_source']} vs {result['train_source']}):\n"
          + "  ".join(f"{k.capitalize()} {100 * result[k]:.1f}%" for k in ks), file=sys.stderr)
    write_json(result, args.out)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from permrl.ablate import ablate

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    ablate(args.out, variants, args.seeds, config_file=args.config, preset=args.preset,
           overrides=args.set or [], force=args.force)
    print(f"table: {Path(args.out) / 'table.md'}")
    return 0


def cmd_fig4(args: argparse.Namespace) -> int:
    from permrl.fig4 import policy_learning

    result = policy_learning(args.checkpoint, args.out, args.episodes, policy=args.policy,
                             overrides=args.set or [], force=args.force)
    for task, rows in result["tasks"].items():
        first, last = rows[: len(rows) // 3], rows[-(len(rows) // 3):]
        hard = [sum(r["quartile_share"][3] for r in part) / len(part) for part in (first, last)]
        print(f"{task}: hardest quartile {hard[0]:.1f}% of the draws in the first "
              f"{len(first)} episodes, {hard[1]:.1f}% in the last {len(last)} (uniform: 25%); "
              f"figure {result['figures'][task]}")
        signal = result["reward_signal"][task]
        if signal:
            print(f"{task}: reward {signal['reward_mean']:+.4f} +- {signal['reward_std']:.4f}; "
                  f"draws deviate from pi by {signal['draw_fluctuation']:.4f} per group; "
                  f"gradient t-statistics per group: mean |t| {signal['mean_abs_t']:.2f}, max "
                  f"{signal['max_abs_t']:.2f} (no information about the groups: ~0.8)")
    print(f"per episode: {Path(args.out) / 'fig4.json'}")
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    from permrl.landscape.report import run_landscape

    horizons = [int(k) for k in args.horizons.split(",") if k.strip()]
    run_landscape(args.checkpoint, args.out, task=args.task, horizons=horizons,
                  replicates=args.replicates, cycles=args.cycles, bn_batches=args.bn_batches,
                  lr=args.lr, overrides=args.set or [], seed=args.seed, force=args.force)
    print((Path(args.out) / "landscape.md").read_text(), end="")
    out = Path(args.out)
    print(f"figure {out / 'landscape.png'}; every gain {out / 'landscape.csv'}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from permrl.data.batches import scaled_size
    from permrl.data.prepare import prepare_images, prepare_videos
    from permrl.data.samples import geometry_of
    from permrl.data.sources import open_source
    from permrl.data.video_sources import open_video_source

    cfg = load_config(args.config, args.preset, args.set or [])
    if args.videos:  # every frame, shorter side to --size (default 128)
        spec, kind, size, key = args.videos, "videos", args.size or 128, "videos=prepared-videos"
        total, prepare = len(open_video_source(spec)), prepare_videos
    else:  # the squares the spatial loader crops from
        spec, kind, key = args.images or cfg.data.images, "images", "images=prepared"
        size = args.size or scaled_size(geometry_of(cfg).image_size)
        total, prepare = len(open_source(spec)), prepare_images
    t0 = time.perf_counter()
    with tqdm(total=total, unit=kind[:-1], file=sys.stderr) as bar:
        meta = prepare(spec, args.out, size, workers=args.workers, progress=bar.update)
    print(f"prepared {meta['count']} {kind} of {spec} at {size} px "
          f"({len(meta['unreadable'])} unreadable) in {time.perf_counter() - t0:.0f} s; train "
          f"from it with --set data.{key}:{args.out}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.reference:
        from permrl.config_reference import reference

        print(reference())
        return 0
    print(to_yaml(load_config(args.config, args.preset, args.set or [])), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from permrl.report.html import write_report

    path = Path(args.path)
    if not path.is_dir():
        raise RunError(f"report: {path} is not a run, ablation or demo directory")
    print(f"report: {write_report(path, args.out)}")
    return 0


def write_json(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)


def cmd_eval_probe(args: argparse.Namespace) -> int:
    from permrl.evaluate.run import probe_from_checkpoint

    write_json(probe_from_checkpoint(
        args.checkpoint, args.train, args.test, layer=args.layer, head=args.head,
        random_init=args.random_init, preset=args.preset, cache_dir=args.cache,
        bn_stats=args.bn_stats, epochs=args.epochs, precision=args.precision), args.out)
    return 0


def cmd_eval_finetune(args: argparse.Namespace) -> int:
    from permrl.evaluate.run import finetune_from_checkpoint

    write_json(finetune_from_checkpoint(
        args.checkpoint, args.train, args.test, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, random_init=args.random_init, preset=args.preset, seed=args.seed), args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from permrl.export import export_trunk

    write_json(export_trunk(args.checkpoint, args.out, args.format,
                            random_init=args.random_init, preset=args.preset), None)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from permrl.demo import run_demo

    run_demo(Path(args.out), steps=args.steps, force=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="permrl",
        description="Spatiotemporal self-supervision by ordering, with a learned permutation "
                    "policy (Buechler, Brattoli & Ommer, ECCV 2018).",
    )
    p.add_argument("--version", action="version", version=f"permrl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_training_commands(sub)
    add_evaluation_commands(sub)
    return p


def add_training_commands(sub: argparse._SubParsersAction) -> None:
    """train, config, permutations, ablate, fig4, demo."""
    t = sub.add_parser("train", help="self-supervised training (spatial and/or temporal "
                       "ordering: S, T, S+T, S&T)")
    t.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="starting values (default: cpu, or the config's `preset`)")
    t.add_argument("--config", help="YAML file; its keys override the preset")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.steps=500 (repeatable)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="where to train (default: the config's train.device, auto)")
    t.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR/checkpoint.pt with RUN_DIR/config.yaml (plus --set)")
    t.add_argument("--force", action="store_true", help="overwrite a non-empty RUN_DIR")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("config", help="print the resolved config (--show) or the reference "
                       "of every key (--reference)")
    what = c.add_mutually_exclusive_group()
    what.add_argument("--show", action="store_true",
                      help="the resolved values as YAML, usable as --config (the default)")
    what.add_argument("--reference", action="store_true",
                      help="every key with its defaults and meaning (docs/config.md), markdown")
    c.add_argument("--preset", choices=list(PRESETS), default=None)
    c.add_argument("--config", help="YAML file to resolve")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.set_defaults(func=cmd_config)

    pm = sub.add_parser("permutations", help="select a maximally diverse permutation set")
    pm.add_argument("--count", type=int, default=1000)
    pm.add_argument("--size", type=int, default=9)
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument("--criterion", choices=["maxmin", "maxmean"], default="maxmin")
    pm.add_argument("--include-identity", action="store_true")
    pm.add_argument("--exclude-reversals", action="store_true",
                    help="never both psi and its reversal size-1-psi (the temporal default)")
    pm.add_argument("--out", help="save to this .npy (with a .json checksum sidecar)")
    pm.set_defaults(func=cmd_permutations)

    a = sub.add_parser("ablate", help="Table 5: train and evaluate variants x seeds")
    a.add_argument("--preset", choices=list(PRESETS), default=None)
    a.add_argument("--config", help="YAML file shared by every cell")
    a.add_argument("--variants", default="S,S+P,T,T+P,S&T,S+T,S+T+P",
                   help="comma-separated, from S,S+P,T,T+P,S&T,S+T,S+T+P and the adaptive "
                   "baselines S+exp3,S+hardness,T+exp3,T+hardness,S+T+exp3,S+T+hardness, the "
                   "ceiling arm S+fixed,T+fixed,S+T+fixed")
    a.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant")
    a.add_argument("--out", required=True, help="ablation directory (a rerun resumes it)")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="shared override")
    a.add_argument("--force", action="store_true",
                   help="retrain the cells of --out whose config differs from this command's")
    a.set_defaults(func=cmd_ablate)

    f4 = sub.add_parser("fig4", help="Fig. 4 protocol: a fresh policy from an intermediate "
                        "checkpoint, E episodes; quartile shares and group sizes per episode")
    f4.add_argument("--checkpoint", required=True, help="e.g. RUN/checkpoint-00001000.pt")
    f4.add_argument("--out", required=True, help="new run directory")
    f4.add_argument("--episodes", type=int, default=20)
    f4.add_argument("--policy", default="reinforce", help="reinforce | exp3 | hardness")
    f4.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override (default: the checkpoint's config, its current lr held)")
    f4.add_argument("--force", action="store_true", help="replace a previous --out")
    f4.set_defaults(func=cmd_fig4)

    ls = sub.add_parser("landscape", help="can a policy learn here? every group / tilt of Psi "
                        "trained K steps from a checkpoint, R replicates, against uniform")
    ls.add_argument("--checkpoint", required=True, help="a run directory or checkpoint file")
    ls.add_argument("--out", required=True, help="folder for landscape.{json,csv,md,png}")
    ls.add_argument("--task", default=None, help="spatial | temporal (default: the first)")
    ls.add_argument("--horizons", default="5,40", help="episode lengths K, comma-separated")
    ls.add_argument("--replicates", type=int, default=4)
    ls.add_argument("--cycles", type=int, default=8,
                    help="ordinary N + K cycles for the noise of the Eq. 7 reward")
    ls.add_argument("--bn-batches", type=int, default=4,
                    help="uniform batches the re-estimated BatchNorm statistics are taken on")
    ls.add_argument("--lr", type=float, default=None,
                    help="held learning rate (default: the checkpoint's current one)")
    ls.add_argument("--seed", type=int, default=0)
    ls.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    ls.add_argument("--force", action="store_true", help="replace a previous landscape")
    ls.set_defaults(func=cmd_landscape)

    pr = sub.add_parser("prepare", help="decode and resize an image source once into a store "
                        "that training only crops from (data.images=prepared:DIR)")
    what = pr.add_mutually_exclusive_group()
    what.add_argument("--images", default=None, help="image source (default: data.images)")
    what.add_argument("--videos", default=None, help="a video source instead: every frame "
                      "decoded once, shorter side --size (default 128) px")
    pr.add_argument("--out", required=True, help="the store's folder (must not exist)")
    pr.add_argument("--preset", choices=list(PRESETS), default=None,
                    help="the preset the store is for (its puzzle size sets the square side)")
    pr.add_argument("--config", help="YAML config file (its puzzle size sets the square side)")
    pr.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    pr.add_argument("--size", type=int, default=None,
                    help="square side in px (default: what the config's loader resizes to; "
                    "videos: the frames' shorter side, 128)")
    pr.add_argument("--workers", type=int, default=1, help="decoding processes")
    pr.set_defaults(func=cmd_prepare)

    d = sub.add_parser("demo", help="train on built-in data and compare with random init")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--steps", type=int, default=None,
                   help="training steps (default: 600, as examples/table5.yaml)")
    d.set_defaults(func=cmd_demo)

def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="features in float32 (exact; default: the checkpoint's "
                             "eval.precision, float32) or under bf16 autocast (faster on a GPU)")


def add_evaluation_commands(sub: argparse._SubParsersAction) -> None:
    """eval knn | probe | finetune, report, export."""
    ev = sub.add_parser("eval", help="evaluate learned features")
    evsub = ev.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    k = evsub.add_parser("knn", help="nearest-neighbour retrieval, Top-1/5/10/20/50 (Table 1)")
    k.add_argument("--checkpoint", help="a training checkpoint (or use --random-init)")
    k.add_argument("--train", help="gallery source, KIND:PATH (default: the config's "
                   "eval.knn_train)")
    k.add_argument("--test", help="query source, KIND:PATH (default: eval.knn_test)")
    k.add_argument("--layer", default=None, help="trunk block (default: the config's, pool5)")
    k.add_argument("--bn-stats", choices=BN_STATS, default="gallery",
                   help="re-estimate BatchNorm statistics on the gallery (default) or keep "
                        "the stored ones")
    k.add_argument("--random-init", action="store_true",
                   help="a randomly initialised trunk (baseline row)")
    k.add_argument("--preset", choices=list(PRESETS), default="cpu",
                   help="architecture for --random-init without a checkpoint")
    k.add_argument("--out", help="write the JSON result here")
    add_precision_argument(k)
    k.set_defaults(func=cmd_eval_knn)

    r = sub.add_parser("report", help="one self-contained HTML report of a run/ablation/demo")
    r.add_argument("path", help="RUN_DIR, ablation directory or demo directory")
    r.add_argument("--out", help="HTML file (default PATH/report.html)")
    r.set_defaults(func=cmd_report)

    pr = evsub.add_parser("probe", help="linear / MLP probe on frozen features (Table 2)")
    pr.add_argument("--checkpoint")
    pr.add_argument("--train", required=True, help="labelled source, KIND:PATH")
    pr.add_argument("--test", required=True, help="labelled source, KIND:PATH")
    pr.add_argument("--layer", default="pool5", help="trunk block, conv1..pool5")
    pr.add_argument("--head", choices=["linear", "mlp"], default="linear")
    pr.add_argument("--epochs", type=int, default=30, help="fixed; nothing tuned on test")
    pr.add_argument("--bn-stats", choices=BN_STATS, default="gallery",
                    help="re-estimate BN on the training images (default) or keep stored")
    pr.add_argument("--cache", help="feature cache folder (default: beside the checkpoint)")
    pr.add_argument("--random-init", action="store_true")
    pr.add_argument("--preset", choices=list(PRESETS), default="cpu")
    pr.add_argument("--out", help="write the JSON result here")
    add_precision_argument(pr)
    pr.set_defaults(func=cmd_eval_probe)

    ft = evsub.add_parser("finetune", help="fine-tune conv1..conv5 with new fc layers "
                          "(Tables 3-5; VOC mAP, video accuracy over 25 frames)")
    ft.add_argument("--checkpoint")
    ft.add_argument("--train", required=True, help="labelled source (voc2007:...?mode=images "
                    "for multi-label mAP; a video source for UCF-101/HMDB-51)")
    ft.add_argument("--test", required=True)
    ft.add_argument("--steps", type=int, default=2000)
    ft.add_argument("--batch-size", type=int, default=64)
    ft.add_argument("--lr", type=float, default=0.01)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--random-init", action="store_true")
    ft.add_argument("--preset", choices=list(PRESETS), default="cpu")
    ft.add_argument("--out", help="write the JSON result here")
    ft.set_defaults(func=cmd_eval_finetune)

    x = sub.add_parser("export", help="the trunk with BatchNorm folded into the convolutions "
                       "(a plain CaffeNet): state dict, TorchScript or ONNX")
    x.add_argument("--checkpoint")
    x.add_argument("--format", choices=["state-dict", "torchscript", "onnx"],
                   default="state-dict")
    x.add_argument("--out", required=True)
    x.add_argument("--random-init", action="store_true")
    x.add_argument("--preset", choices=list(PRESETS), default="cpu")
    x.set_defaults(func=cmd_export)



def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:  # ConfigError, SourceError, RunError, CheckpointError, ...
        print(f"permrl: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output path that cannot be written, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"permrl: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # a run stopped on a signal after its checkpoint
        print(f"permrl: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("permrl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
