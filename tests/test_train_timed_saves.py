"""`checkpoint.every_minutes` is decided by process 0's clock alone: processes whose clocks
disagree still save on the same steps."""

from llm.train.timed_saves import TimedSaves


class FakeClock:
    def __init__(self, seconds_per_step: float, offset: float = 0.0):
        self.step, self.rate, self.offset = 0, seconds_per_step, offset

    def __call__(self) -> float:
        return self.offset + self.step * self.rate


def simulate(clocks, steps=400, minutes=1.0):
    """Lock-step 'processes': process 0's decision is what every process's `agree` returns."""
    shared = {}

    def agree_for(index):
        def agree(values):
            if index == 0:
                shared["values"] = list(values)
            return shared["values"]
        return agree

    saves = [TimedSaves(minutes, 0, clock, agree_for(i)) for i, clock in enumerate(clocks)]
    saved, checks = [[] for _ in clocks], 0
    for step in range(1, steps + 1):
        for clock in clocks:
            clock.step = step
        for i, timed in enumerate(saves):
            checks += i == 0 and step >= timed.next_check
            if timed.due(step):
                saved[i].append(step)
                timed.saved(step)
    return saved, checks


def test_processes_with_skewed_clocks_save_on_the_same_steps():
    # 1 s per step on process 0; process 1's clock is an hour ahead and runs 7x fast.
    saved, checks = simulate([FakeClock(1.0), FakeClock(7.0, offset=3600.0)])
    assert saved[0] == saved[1] == [60, 120, 180, 240, 300, 360]
    assert checks < 400 / 4  # a few agreements per interval, not one per step


def test_a_single_process_checks_its_clock_every_step():
    clock = FakeClock(1.0)
    timed = TimedSaves(0.5, 0, clock)
    due = []
    for step in range(1, 100):
        clock.step = step
        if timed.due(step):
            due.append(step)
            timed.saved(step)
    assert due == [30, 60, 90]
    assert not TimedSaves(0.0, 0, clock).due(1)
