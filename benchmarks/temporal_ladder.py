"""Sanity ladder of the temporal task: u = 3, 4, 6 frames on the built-in clips, in one process.

    python benchmarks/temporal_ladder.py                 # cpu preset, the default budgets
    python benchmarks/temporal_ladder.py --steps 3:200,4:600,6:1500 --seed 1

Each rung trains the temporal task alone (`tasks=[temporal]`, the cpu preset's defaults, Psi_T
without reversal twins: all 3 of 3!/2, all 12 of 4!/2, 100 of 6!/2) for its budget of steps on
`demo-videos` and reads the last held-out accuracy over all of Psi_T x X_val. It prints the
accuracy, chance (1/|Psi_T|), the chance-corrected accuracy (acc - chance) / (1 - chance) (0 at
chance, 1 when perfect), the seconds per step, and "ok" when the corrected accuracy is at least
0.5 (half-way from chance to perfect): what "learned well above chance" means here.

Measured on 2 CPU cores, seed 0 (10 min in all): u=3 97.2% (corrected 0.96) after 300 steps,
u=4 71.5% (0.69) after 900 (53.5%, 0.49, after 600), u=6 63.9% (0.64) after 1500; 0.21-0.27 s
per step including start-up and validation.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from permrl.config import load_config
from permrl.train import train

DEFAULT_BUDGETS = {3: 300, 4: 900, 6: 1500}
PASS_CORRECTED = 0.5


def parse_budgets(text: str) -> dict[int, int]:
    pairs = [item.split(":") for item in text.split(",") if item]
    return {int(u): int(steps) for u, steps in pairs}


def rung(frames: int, steps: int, seed: int, out: Path) -> dict[str, float]:
    permutations = min(100, math.factorial(frames) // 2)
    cfg = load_config(preset="cpu", overrides=[
        "tasks=[temporal]", f"temporal.frames={frames}",
        f"temporal.permutations={permutations}", f"train.steps={steps}",
        f"train.val_every={steps}", f"train.checkpoint_every={steps}", f"seed={seed}",
    ])
    t0 = time.perf_counter()
    result = train(cfg, out / f"u{frames}", progress=False)
    seconds = time.perf_counter() - t0
    accuracy = result.val_accuracy["temporal"]
    chance = 1.0 / permutations
    return {"frames": frames, "permutations": permutations, "steps": steps,
            "accuracy": accuracy, "chance": chance,
            "corrected": (accuracy - chance) / (1.0 - chance), "s_per_step": seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=parse_budgets, default=DEFAULT_BUDGETS,
                        help="budgets as u:steps,... (default 3:300,4:900,6:1500)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames, steps in sorted(args.steps.items()):
            rows.append(rung(frames, steps, args.seed, Path(tmp)))
    print("\n  u  |Psi_T|  steps  held-out acc  chance  corrected  s/step (incl. start-up)")
    for r in rows:
        verdict = "ok" if r["corrected"] >= PASS_CORRECTED else "BELOW"
        print(f"{r['frames']:3d}  {r['permutations']:7d}  {r['steps']:5d}  "
              f"{100 * r['accuracy']:11.1f}%  {100 * r['chance']:5.1f}%  "
              f"{r['corrected']:9.2f}  {r['s_per_step']:.3f}  {verdict}")


if __name__ == "__main__":
    main()
