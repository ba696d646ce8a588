"""The reward landscape of a checkpoint: can a permutation policy learn here? (design §5)

`measure`: the arms (distributions over Psi) trained from a restored checkpoint with common
random numbers, and the Eq. 7 rewards of ordinary cycles; `statistics`: blocked F, eta^2,
split-half agreement, size vs difficulty, episodes to detect; `report`: `permrl landscape`.
"""
