"""How permutations are chosen: uniformly, or by the learned policy (design §5)."""
