"""The library example runs: a user's own loop with permrl's puzzles, network and policy."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest

import permrl

EXAMPLE = Path(__file__).parent.parent / "examples" / "custom_loop.py"


def test_the_custom_loop_example_trains_and_its_policy_gets_rewards():
    spec = importlib.util.spec_from_file_location("custom_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    episodes = module.main(steps=50)  # cycles of 20 + 5: episodes end at 25 and 50
    assert [e["sampler"] for e in episodes] == ["reinforce", "reinforce"]
    assert episodes[0]["reward"] is None  # Eq. 7 needs two errors first
    assert episodes[1]["reward"] == episodes[1]["extrapolated_error"] - episodes[1]["error_after"]
    assert sum(episodes[1]["chosen_groups"]) == 5 * 32  # K batches of 32 actions


def test_the_package_exports_its_building_blocks():
    assert all(hasattr(permrl, name) for name in permrl.__all__)
    assert permrl.Cycle(3, 2).phase(3) == "episode_start"


@pytest.mark.parametrize("module", [
    "permrl.permutations", "permrl.data.samples", "permrl.models.heads", "permrl.policy.state",
    "permrl.policy.groups", "permrl.policy.reinforce", "permrl.policy.cycle",
    "permrl.policy.samplers"])
def test_the_usage_examples_in_the_docstrings_run(module):
    result = doctest.testmod(importlib.import_module(module),
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0

