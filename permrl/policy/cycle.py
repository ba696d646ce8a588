"""When the policy acts (Sect. 3.2, Fig. 2): the one statement of its schedule.

Cycles of N SGD iterations with pi fixed, then an episode of K mini-batches drawn from pi:

    done:  ... N              N + K            2N + K          2(N + K) ...
           SGD with pi fixed | episode (K)    | SGD            | episode
                   episode_start ^  episode_end ^    episode_start ^  episode_end ^

After `done` = m (N + K) + N iterations the state s_t regroups Psi and fixes s_hat, and the
episode begins; after `done` = (m + 1)(N + K) the state s_{t+1} gives the reward (Eq. 7) and pi
is updated (Eq. 9). Nothing happens at `done` = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Cycle:
    """The N + K schedule: `phase(done)` after `done` iterations, `updates(steps)` in a run.

    >>> cycle = Cycle(sgd_steps=100, episode_batches=5)
    >>> [cycle.phase(done) for done in (99, 100, 104, 105)]
    [None, 'episode_start', None, 'episode_end']
    >>> cycle.updates(range(1000))  # episodes that end within 1000 iterations
    9
    """

    sgd_steps: int  # N
    episode_batches: int  # K

    @property
    def length(self) -> int:
        return self.sgd_steps + self.episode_batches

    def phase(self, done: int) -> str | None:
        """"episode_start", "episode_end" or None after `done` iterations."""
        if done == 0:
            return None
        position = done % self.length
        return ("episode_start" if position == self.sgd_steps
                else "episode_end" if position == 0 else None)

    def updates(self, steps: range) -> int:
        """Episodes that begin and end while a task trains `steps` (iterations start..stop-1):
        one starts after iteration m (N + K) + N, ends after (m + 1)(N + K)."""
        first_m = max(0, math.ceil((steps.start + 1 - self.sgd_steps) / self.length))
        last_m = steps.stop // self.length - 1
        return max(0, last_m - first_m + 1)


__all__ = ["Cycle"]
