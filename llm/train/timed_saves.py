"""`checkpoint.every_minutes`: one decision for every process of a job.

Orbax's save is collective, so processes that disagree on whether a step saves deadlock. Only
process 0's clock decides. Asking it every step would stall each step on a collective, so the
decision is taken at check steps only: at each one, process 0 says whether the interval has
passed and, from its measured step rate, picks the next check step at about half the steps
left; every process adopts both numbers. A few small collectives per interval, and a save
lands at most a fraction of the step rate's drift late.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

Agree = Callable[[Sequence[int]], Sequence[int]]


def agree_with_process_0(values: Sequence[int]) -> list[int]:
    """Process 0's integers on every process (all processes call it together)."""
    from jax.experimental import multihost_utils

    return [int(v) for v in np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(values, np.int32)))]


class TimedSaves:
    """Says at which steps a time-based save is due; call `due` every step, `saved` after any save."""

    def __init__(self, minutes: float, step: int, clock: Callable[[], float], agree: Agree | None = None):
        """`agree` shares process 0's decision (None: a single process, which checks every step)."""
        self.seconds = float(minutes) * 60.0
        self.clock = clock
        self.agree = agree
        self.saved(step)

    def saved(self, step: int) -> None:
        """Any save (periodic, timed, ...) restarts the interval; every process calls it at the same step."""
        self.since_step, self.since_time = step, self.clock()
        self.next_check = step + 1

    def due(self, step: int) -> bool:
        if not self.seconds or step < self.next_check:
            return False
        elapsed = self.clock() - self.since_time
        if elapsed >= self.seconds:
            decision = [1, step + 1]
        else:
            rate = (step - self.since_step) / elapsed if elapsed > 0 else 0.0  # steps per second
            decision = [0, step + max(1, int((self.seconds - elapsed) * rate / 2))]
        if self.agree is None:
            decision[1] = step + 1  # no one to agree with: look at the clock every step
        else:
            decision = list(self.agree(decision))
        self.next_check = decision[1]
        return bool(decision[0])


def timed_saves(minutes: float, step: int, clock: Callable[[], float]) -> TimedSaves:
    """The loop's schedule: agreement through process 0 when the job has several processes."""
    return TimedSaves(minutes, step, clock, agree_with_process_0 if jax.process_count() > 1 else None)
