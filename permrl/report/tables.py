"""The ablation's and the demo's tables and summary sentences, from their cells' results.

Per variant: mean, spread and each seed's value of retrieval and held-out puzzle accuracy
(`summary_rows`, `summary_table`); every adaptive variant against its uniform twin seed by seed
(`paired_rows`); how far each adaptive sampler moved and whether beyond its shuffled-reward
null (`policy_rows`, `policy.null`); the summary in sentences. Rendering a report reads these
and never loads the training code.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from permrl.config import TASKS, Config, load_config
from permrl.run_dir import read_metrics
from permrl.variants import KS, VARIANTS, cell_dir, uniform_twin


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def metric_keys(cells: list[dict[str, Any]]) -> list[str]:
    """The table's metrics: kNN recall@k of every k the cells have, then the held-out puzzle
    accuracy of every task some cell trained (`<task>_puzzle`)."""
    ks = [k for k in KS if k in cells[0]["knn"]]
    return ks + [f"{t}_puzzle" for t in TASKS
                 if any(t in c.get("puzzle_accuracy", {}) for c in cells)]


def metric_value(cell: dict[str, Any], key: str) -> float | None:
    """A cell's metric in %: kNN recall@k, or the final held-out puzzle accuracy of a task."""
    if key.endswith("_puzzle"):
        accuracy = cell.get("puzzle_accuracy", {}).get(key.removesuffix("_puzzle"))
        return None if accuracy is None else 100 * accuracy
    return 100 * cell["knn"][key]


def per_seed(cells: list[dict[str, Any]], variant: str, key: str) -> dict[int, float]:
    values = {c["seed"]: metric_value(c, key) for c in cells if c["variant"] == variant}
    return {seed: v for seed, v in sorted(values.items()) if v is not None}


def summary_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: for every metric the mean and standard deviation over seeds and
    each seed's value (`top1_mean`, `top1_std`, `top1_seed0`, ...), in %."""
    rows = []
    for v in dict.fromkeys(c["variant"] for c in cells):
        row: dict[str, Any] = {"variant": v, "seeds": sum(c["variant"] == v for c in cells)}
        for key in metric_keys(cells):
            values = per_seed(cells, v, key)
            m, sd = mean_std(list(values.values())) if values else (float("nan"), float("nan"))
            row |= {f"{key}_mean": m, f"{key}_std": sd}  # rounded once, where they are printed
            row |= {f"{key}_seed{seed}": value for seed, value in values.items()}
        rows.append(row)
    return rows


def paired_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each adaptive variant against its uniform twin, seed by seed (the same seed gives both
    the same initial weights and data order): for every metric the mean and standard deviation
    of the per-seed differences (adaptive - uniform, in points of %), how many seeds have the
    adaptive variant higher, and whether |mean| exceeds the differences' standard deviation
    (`exceeds_spread`; with 3 seeds a t-statistic above 1.7: a sign, not a significance test)."""
    present = list(dict.fromkeys(c["variant"] for c in cells))
    pairs = []
    for v in present:
        twin = uniform_twin(v)
        if twin not in present:
            continue
        row: dict[str, Any] = {"variant": v, "twin": twin}
        for key in metric_keys(cells):
            mine, theirs = per_seed(cells, v, key), per_seed(cells, twin, key)
            diffs = [mine[s] - theirs[s] for s in mine if s in theirs]
            if not diffs:
                continue
            m, sd = mean_std(diffs)
            row |= {f"{key}_diff": m, f"{key}_diff_std": sd, f"{key}_seeds": len(diffs),
                    f"{key}_higher": sum(d > 0 for d in diffs),
                    f"{key}_exceeds_spread": len(diffs) > 1 and abs(m) > sd}
        pairs.append(row)
    return pairs


NULL_SHUFFLES = 200  # shuffles of a run's rewards behind each adaptive cell's null


def run_null(run_dir: Path, task: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """`policy.null.shuffled_reward_null` of one cell: its learner rebuilt from the cell's
    config.yaml; None for a sampler that does not learn from rewards (hardness)."""
    from permrl.policy.null import shuffled_reward_null
    from permrl.tasks import make_sampler

    cfg = load_config(run_dir / "config.yaml")
    if cfg.policy not in ("reinforce", "exp3"):
        return None
    size = getattr(cfg, task).permutations
    batch = cfg.train.batch_size
    per_draw = {"sample": 1, "batch": batch, "episode": batch * cfg.cycle.episode_batches}
    return shuffled_reward_null(
        [r for r in records if r.get("task") == task],
        lambda: make_sampler(cfg, task, size).learner, shuffles=NULL_SHUFFLES, seed=cfg.seed,
        actions_per_draw=per_draw[cfg.cycle.episode_actions])


def policy_rows(cells: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """Per adaptive variant and task, how far its sampler moved from uniform draws over Psi
    (`policy.null.policy_movement` of each seed's episodes, means over seeds), and against
    its shuffled-reward null (`policy.null`): the seeds whose max |pi - q| exceeds the null's
    95th percentile, and the mean percentile of max |pi - q| and of mean |t| in the null. A
    "+P" difference is only a policy effect when the policy moved beyond its null."""
    from permrl.policy.null import policy_movement

    rows = []
    for v in dict.fromkeys(c["variant"] for c in cells if uniform_twin(c["variant"])):
        dirs = [cell_dir(root, v, c["seed"]) for c in cells if c["variant"] == v]
        records = [read_metrics(d) for d in dirs]
        for task in TASKS:
            moved = [m for r in records if (m := policy_movement(r, task)) is not None]
            if not moved:
                continue
            row = {"variant": v, "task": task, "seeds": len(moved)} | {
                key: statistics.fmean(m[key] for m in moved) for key in moved[0]}
            nulls = [n for d, r in zip(dirs, records, strict=True)
                     if (d / "config.yaml").is_file() and (n := run_null(d, task, r))]
            if nulls:
                row |= {"null_seeds": len(nulls),
                        "beyond_null": sum(n["beyond_null"] for n in nulls),
                        "null_95": statistics.fmean(n["max_deviation_null_95"] for n in nulls),
                        "null_percentile": statistics.fmean(n["max_deviation_percentile"]
                                                            for n in nulls),
                        "t_percentile": statistics.fmean(n["mean_abs_t_percentile"]
                                                         for n in nulls)}
            rows.append(row)
    return rows


def policy_effect(movement: list[dict[str, Any]], variant: str) -> bool | None:
    """Did the variant's sampler move beyond its null in a majority of the seeds, for every
    task it learns on? None when no null could be computed (hardness, or no rewards)."""
    rows = [m for m in movement if m["variant"] == variant and "null_seeds" in m]
    if not rows:
        return None
    return all(2 * m["beyond_null"] > m["null_seeds"] for m in rows)


METRIC_NAMES = {"top1": "Top-1 retrieval", "spatial_puzzle": "spatial puzzle accuracy",
                "temporal_puzzle": "temporal puzzle accuracy"}


def summary_sentences(rows: list[dict[str, Any]], pairs: list[dict[str, Any]],
                      movement: list[dict[str, Any]] = ()) -> list[str]:
    """What a reader takes from the table in ten seconds: the leader on each headline metric,
    every adaptive-vs-uniform difference that exceeds the seeds' spread, and how far the
    learned policy moved from uniform draws."""
    seeds = sorted({r["seeds"] for r in rows})
    said = [f"{len(rows)} variants, {'/'.join(map(str, seeds))} seed(s) each."]
    for key, name in METRIC_NAMES.items():
        scored = [r for r in rows if not math.isnan(r.get(f"{key}_mean", math.nan))]
        if len(scored) < 2:
            continue
        best, second = sorted(scored, key=lambda r: -r[f"{key}_mean"])[:2]
        said.append(f"{name}: {best['variant']} ahead ({best[f'{key}_mean']:.1f} ± "
                    f"{best[f'{key}_std']:.1f} %), next {second['variant']} "
                    f"({second[f'{key}_mean']:.1f} ± {second[f'{key}_std']:.1f}).")
    policy = [m for m in movement if VARIANTS[m["variant"]][1] == "policy=reinforce"]

    def span(key: str, fmt: str) -> str:
        low, high = min(m[key] for m in policy), max(m[key] for m in policy)
        return f"{low:{fmt}}" if f"{low:{fmt}}" == f"{high:{fmt}}" else f"{low:{fmt}}-{high:{fmt}}"

    if policy:
        said.append(f"The learned policy (+P) moved {span('max_deviation', '.3f')} from "
                    "uniform draws over Psi (max |pi - q| at the last episode, mean over seeds; "
                    f"{span('updates', '.0f')} updates; "
                    "hardest quartile "
                    f"{span('hardest_share', '.0%')} of the last draws, "
                    "25% = uniform).")
        nulls = [m for m in policy if "null_seeds" in m]
        if nulls:
            beyond = sum(m["beyond_null"] for m in nulls)
            total = sum(m["null_seeds"] for m in nulls)
            said.append(f"Against its null (the same learner fed the run's own rewards "
                        f"shuffled across episodes): beyond the null's 95th percentile in "
                        f"{beyond} of {total} runs; max |pi - q| at percentile "
                        f"{span('null_percentile', '.0f')} of the null, reward signal (mean "
                        f"|t|) at {span('t_percentile', '.0f')}.")
    if pairs and seeds == [1]:
        return said + ["One seed per variant: the adaptive-vs-uniform differences below have "
                       "no spread to be judged against (run more seeds)."]
    for p in pairs:
        found = [f"{METRIC_NAMES[k]} {p[f'{k}_diff']:+.1f} ± {p[f'{k}_diff_std']:.1f} "
                 f"({p[f'{k}_higher']}/{p[f'{k}_seeds']} seeds higher)"
                 for k in METRIC_NAMES if p.get(f"{k}_exceeds_spread")]
        caveat = ""
        if found and policy_effect(list(movement), p["variant"]) is False:
            caveat = " (its sampler did not move beyond its null: not a policy effect)"
        said.append(f"{p['variant']} vs {p['twin']}: " + ("; ".join(found) if found else
                    "no difference beyond the seeds' spread") + caveat + ".")
    return said


def summary_table(cells: list[dict[str, Any]], cfg: Config,
                  movement: list[dict[str, Any]] = ()) -> tuple[str, list[dict[str, Any]]]:
    """Table 5 layout as markdown (the tables of `ablation_tables` with their captions), and
    the rows of `summary_rows`."""
    keys = metric_keys(cells)
    first, rows = cells[0]["knn"], summary_rows(cells)
    tables = iter(markdown_table(t[0], t[1:]) for t in ablation_tables(cells, movement))
    parts = [
        f"kNN retrieval ({first['layer']}, cosine, recall@k in %, mean ± std over "
        f"{rows[0]['seeds']} seed(s)); gallery {first['train_source']} ({first['gallery']} "
        f"items), queries {first['test_source']} ({first['queries']} items); BN statistics: "
        f"{first['bn_stats']}; every variant trained {cells[0]['steps']} steps with the same "
        f"config (preset {cfg.preset}, images {cfg.data.images}, videos {cfg.data.videos}); "
        "nothing selected on the test set."]
    if any(k.endswith("_puzzle") for k in keys):
        parts.append("Puzzle: held-out accuracy (%) over all |Psi| x |X_val| permuted X_val "
                     "samples at the end (chance 100/|Psi|; X_val is never trained on, but the "
                     "adaptive samplers see its state).")
    parts += [next(tables), "Per seed (seed: value):", next(tables)]
    if paired_rows(cells):
        parts += ["Adaptive sampler - its uniform twin, paired by seed (points of %): mean ± "
                  "std of the per-seed differences [seeds where the adaptive one is higher]; "
                  "**bold**: |mean| exceeds the std (a sign, not a significance test).",
                  next(tables)]
    if movement:
        parts += ["How far each adaptive sampler moved from uniform draws over Psi (mean over "
                  "seeds): max |pi - q| and KL(q || pi) at the last episode (q = group sizes / "
                  "|Psi|); the hardest quartile's share of the draws in the last third of the "
                  "episodes (25% = uniform); mean |t| of the policy-gradient estimate per group "
                  "(~0.8 when the rewards carry no information about the groups); the null: "
                  f"the same learner replayed on the run's states with its rewards shuffled "
                  f"across episodes ({NULL_SHUFFLES} shuffles), its 95th percentile of max "
                  "|pi - q|, where the run's max |pi - q| and mean |t| fall in it, and the "
                  "seeds beyond the 95th percentile.",
                  next(tables)]
    return "\n\n".join(parts), rows


def ablation_tables(cells: list[dict[str, Any]], movement: list[dict[str, Any]] = ()
                    ) -> list[list[list[str]]]:
    """The ablation's tables as text (header row first), for markdown and HTML: mean ± std
    over seeds, each seed's value, the adaptive variants against their uniform twins, and (with
    `policy_rows`) how far each adaptive sampler moved."""
    keys = metric_keys(cells)
    heads = ["variant", *(k.replace("_", " ") if k.endswith("_puzzle") else k.capitalize()
                          for k in keys)]
    rows, pairs = summary_rows(cells), paired_rows(cells)
    tables = [
        [heads, *([r["variant"], *(mean_std_cell(r, k) for k in keys)]
                  for r in rows)],
        [heads, *([r["variant"], *(", ".join(f"{s}: {v:.1f}" for s, v in
                                             per_seed(cells, r["variant"], k).items()) or "-"
                                   for k in keys)] for r in rows)]]
    if pairs:
        tables.append([[heads[0], "vs", *heads[1:]],
                       *([p["variant"], p["twin"], *(paired_cell(p, k) for k in keys)]
                         for p in pairs)])
    if movement:
        tables.append([["variant", "task", "seeds", "updates", "max dev. pi - q", "KL(q, pi)",
                        "hardest quartile (%)", "mean abs t", "null 95th pct.",
                        "percentile in null (dev. / t)", "beyond null"], *(
            [m["variant"], m["task"], str(m["seeds"]), f"{m['updates']:.0f}",
             f"{m['max_deviation']:.3f}", f"{m['kl']:.3f}", f"{100 * m['hardest_share']:.1f}",
             f"{m['mean_abs_t']:.2f}", *null_cells(m)] for m in movement)])
    return tables


def null_cells(m: dict[str, Any]) -> list[str]:
    if "null_seeds" not in m:
        return ["-", "-", "n/a (learns no reward)" if m["variant"].endswith("hardness") else "-"]
    return [f"{m['null_95']:.3f}", f"{m['null_percentile']:.0f} / {m['t_percentile']:.0f}",
            f"{m['beyond_null']}/{m['null_seeds']}"]


def mean_std_cell(row: dict[str, Any], key: str) -> str:
    """"mean ± std" of a summary row, "-" where the variant does not train that task."""
    mean = row[f"{key}_mean"]
    return "-" if math.isnan(mean) else f"{mean:.1f} ± {row[f'{key}_std']:.1f}"


def paired_cell(pair: dict[str, Any], key: str) -> str:
    if f"{key}_diff" not in pair:
        return "-"
    diff = f"{pair[f'{key}_diff']:+.1f}"
    return (f"{f'**{diff}**' if pair[f'{key}_exceeds_spread'] else diff} ± "
            f"{pair[f'{key}_diff_std']:.1f} [{pair[f'{key}_higher']}/{pair[f'{key}_seeds']}]")


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def format_table(report: dict[str, Any]) -> str:
    """demo.md: the protocol in words and the tables of `demo_tables`."""
    first = next(iter(report["rows"].values()))
    img, vid = first["images"], first["videos"]
    retrieval, puzzle = (markdown_table(t[0], t[1:]) for t in demo_tables(report))
    chance = ", ".join(f"{n} {1 / p:.1%}" for n, p in report["permutations"].items())
    return "\n".join([
        f"Each variant trained {report['steps']} steps, same seed (training and the ablation's "
        f"evaluation {report['train_seconds']:.0f} s in all). Retrieval "
        f"(cosine, {img['layer']}, BN statistics: {img['bn_stats']}), labelled by photo, on "
        "photo regions never trained on:",
        f"- images: {img['queries']} query crops (bottom-right quarters) vs {img['gallery']} "
        "gallery crops (bottom-left quarters);",
        f"- videos: {vid['frames_per_video']} frames per clip; frame level {vid['queries']} "
        f"queries vs {vid['gallery']} gallery frames (the paper's protocol), video level "
        f"{vid['video_level']['queries']} vs {vid['video_level']['gallery']} clips.",
        "", retrieval, "",
        f"Held-out puzzle accuracy, all permutations of each sample (chance {chance}):",
        "", puzzle])


def demo_tables(report: dict[str, Any]) -> list[list[list[str]]]:
    """demo.json's retrieval and puzzle tables as text, percentages with one decimal."""
    rows, perms = report["rows"], report["permutations"]
    first = next(iter(rows.values()))
    ks = [k for k in KS if k in first["images"] and k in first["videos"]]

    def percent(result: dict[str, Any], keys: list[str]) -> list[str]:
        return [f"{100 * result[k]:.1f}" if k in result else "-" for k in keys]

    retrieval = [["network", "data", *(k.capitalize() for k in ks)]] + [
        [name, label, *percent(result, ks)] for name, row in rows.items()
        for label, result in (("images", row["images"]), ("videos, frame level", row["videos"]),
                              ("videos, video level", row["videos"]["video_level"]))]
    puzzle = [["network", *(f"{n} X_val" for n in perms),
               f"spatial, {report['unseen_images']} unseen photo crops"]] + [
        [name, *percent(row.get("puzzle_xval", {}), list(perms)),
         f"{100 * row['puzzle_unseen']:.1f}"] for name, row in rows.items()]
    return [retrieval, puzzle]
