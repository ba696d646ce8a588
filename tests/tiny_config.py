"""The tiny configuration every test trains with (a few seconds on a laptop CPU): a CaffeNet at
1/8 width with small heads, 2 x 2 puzzles of 12 permutations, 4-frame clips, batches of 8, a
held-out X_val of 4, rendered data. A test states only what it changes (`tiny_overrides`)."""

from __future__ import annotations

TINY: tuple[str, ...] = (
    "data.images=dead-leaves?count=40&size=80", "data.workers=0",
    "data.videos=demo-videos?count=24&frames=12&size=40",
    "model.width=0.125", "model.fc6=16", "model.fc7=32", "model.lstm=16",
    "spatial.grid=2", "spatial.cell=36", "spatial.tile=32", "spatial.permutations=12",
    "temporal.frames=4", "temporal.permutations=12", "temporal.stride_max=2",
    "train.batch_size=8", "train.val_size=4", "train.warmup_steps=0", "train.val_every=0",
    "train.threads=1", "cycle.groups=3",
)


def tiny_overrides(*changes: str) -> list[str]:
    """`--set` overrides: TINY, then `changes` (a later value of a key wins)."""
    return [*TINY, *changes]
