"""How permutations are chosen: uniformly, or by the learned policy (SPEC 5)."""
