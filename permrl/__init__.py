"""permrl: spatiotemporal self-supervision with a learned permutation policy.

The building blocks, each constructible from plain arguments (no config needed); the command
line (`permrl train ...`) wires them for you. See examples/custom_loop.py for a PyTorch loop of
your own with the paper's policy choosing the permutations, and README "Use as a library".

    import permrl
    psi = torch.from_numpy(permrl.select_permutations(100, 9))   # Psi (Sect. 3.1)
    tiles = permrl.make_tiles(uint8_images, permrl.PuzzleGeometry(3, 36, 32))
    puzzles = permrl.shuffle_tiles(tiles, psi, perm_index)        # Eq. 1
    state = permrl.compute_state(net, "spatial", val_tiles, psi)  # s of Eq. 3-6
    state = permrl.state_from_features(my_head, my_val_features, psi)  # the same, own network
"""

__version__ = "0.2.0.dev0"  # also the package version (pyproject.toml reads it)

from permrl.data.samples import (  # noqa: E402
    PuzzleGeometry,
    make_clip_frames,
    make_tiles,
    shuffle_tiles,
)
from permrl.errors import UserError  # noqa: E402
from permrl.models.heads import OrderingNet, SpatialHead, TemporalHead  # noqa: E402
from permrl.models.trunk import CaffeNetBN  # noqa: E402
from permrl.permutations import load_permutations, select_permutations  # noqa: E402
from permrl.policy.bandits import Exp3S, Hardness  # noqa: E402
from permrl.policy.cycle import Cycle  # noqa: E402
from permrl.policy.groups import group_permutations, policy_input  # noqa: E402
from permrl.policy.reinforce import Reinforce, extrapolated_error, reward  # noqa: E402
from permrl.policy.samplers import GroupSampler, UniformSampler  # noqa: E402
from permrl.policy.state import (  # noqa: E402
    NetworkState,
    compute_state,
    softmax_ratio,
    state_from_features,
)
from permrl.policy.twin import PairedTwin  # noqa: E402

__all__ = [
    "CaffeNetBN", "Cycle", "Exp3S", "Hardness", "NetworkState", "OrderingNet", "PairedTwin",
    "GroupSampler", "PuzzleGeometry", "Reinforce", "SpatialHead", "TemporalHead",
    "UniformSampler", "UserError", "compute_state", "extrapolated_error", "group_permutations",
    "load_permutations", "make_clip_frames", "make_tiles", "policy_input", "reward",
    "select_permutations", "shuffle_tiles", "softmax_ratio", "state_from_features",
]
