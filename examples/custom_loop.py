"""A plain PyTorch jigsaw loop with permrl's policy choosing the permutations (Sect. 3.2).

    python examples/custom_loop.py [steps]       (smooth random images: use your own uint8)
"""
import sys

import torch
import torch.nn.functional as F

import permrl


def images(n: int, gen: torch.Generator) -> torch.Tensor:  # uint8 (n, 3, 108, 108), smooth
    coarse = torch.rand(n, 3, 6, 6, generator=gen) * 255
    return F.interpolate(coarse, size=108, mode="bicubic").clamp(0, 255).to(torch.uint8)


def main(steps: int = 300) -> list[dict]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    psi = torch.from_numpy(permrl.select_permutations(24, 9, seed=0))  # Psi: 24 of 9! orders
    geometry = permrl.PuzzleGeometry(grid=3, cell=36, tile=32)  # 108 px puzzles
    trunk = permrl.CaffeNetBN(width=0.125, conv1_stride=2)
    c, h, w = trunk.output_shape(geometry.tile)
    head = permrl.SpatialHead(c * h * w, geometry.num_tiles, len(psi), fc6_dim=32, fc7_dim=64)
    net = permrl.OrderingNet(trunk, {"spatial": head})
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    val_tiles = permrl.make_tiles(images(16, gen), geometry, train=False)  # X_val, held out
    policy = permrl.GroupSampler(len(psi), permrl.Reinforce(4, seed=0), num_groups=4, seed=0)
    cycle, episodes = permrl.Cycle(sgd_steps=20, episode_batches=5), []
    for step in range(steps):
        tiles = permrl.make_tiles(images(32, gen), geometry, generator=gen)
        perm_index = policy.draw(len(tiles), gen)  # uniform until the first state
        if policy.in_episode:
            policy.record(perm_index)  # the episode's actions, credited in Eq. 9
        loss = F.cross_entropy(net.logits("spatial", permrl.shuffle_tiles(tiles, psi, perm_index)),
                               perm_index)  # Eq. 1 puzzles, their permutation as the class
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if phase := cycle.phase(step + 1):  # after N SGD steps / after the K of an episode
            state = permrl.compute_state(net, "spatial", val_tiles, psi)  # s_t: Eq. 3-6
            if phase == "episode_end":
                r = policy.reward(step + 1, state)  # Eq. 7: E_BL - E_{t+1} (None at first)
                episodes.append(policy.episode_record(step + 1, state) | {"reward": r})
                if r is not None:
                    policy.update(r)  # Eq. 9: a REINFORCE step on pi
                policy.end_episode()
                print(f"step {step + 1}: held-out error {state.error:.3f}, reward {r}")
            policy.regroup(step + 1, state)  # k-means groups of Psi and s_hat: Eq. 10
            if phase == "episode_start":
                policy.begin_episode()
    return episodes


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
