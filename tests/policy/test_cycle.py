"""The policy's schedule (`permrl.policy.cycle.Cycle`) against a naive walk over the steps."""

from __future__ import annotations

import pytest

from permrl.policy.cycle import Cycle


def naive(n: int, k: int, steps: range) -> tuple[dict[int, str], int]:
    """Walk the iterations one by one: N with pi fixed, then K of episode, repeated."""
    phases, started, ended, position = {}, None, 0, 0
    for done in range(1, steps.stop + 1):
        position += 1
        if position == n:
            phases[done] = "episode_start"
            started = done
        elif position == n + k:
            phases[done] = "episode_end"
            if started is not None and started > steps.start:  # began after a trained step
                ended += 1
            position = 0
    return phases, ended


@pytest.mark.parametrize(("n", "k"), [(3, 2), (1, 1), (100, 5), (4, 7)])
@pytest.mark.parametrize("steps", [range(0, 40), range(7, 23), range(0, 3), range(12, 300)])
def test_phases_and_updates_equal_a_step_by_step_walk(n, k, steps):
    cycle = Cycle(n, k)
    phases, updates = naive(n, k, steps)
    assert {d: p for d in range(steps.stop + 1) if (p := cycle.phase(d))} == phases
    assert cycle.updates(steps) == updates
    assert cycle.length == n + k
