"""llm.parallel.rendezvous: every process checks in with process 0 before JAX's own connect, so
a silent coordinator, mismatched process counts and duplicate ids are one-line errors."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from llm.errors import UserError
from llm.parallel.plan import DistributedPlan
from llm.parallel.rendezvous import rendezvous


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plan(port: int, pid: int, count: int, timeout: int = 5) -> DistributedPlan:
    return DistributedPlan("explicit", f"127.0.0.1:{port}", count, pid, timeout)


def test_coordinator_that_never_answers_times_out_with_one_line():
    port = free_port()  # nobody listens here
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        rendezvous(_plan(port, pid=1, count=2, timeout=2))
    took = time.monotonic() - start
    message = str(err.value)
    assert f"coordinator 127.0.0.1:{port} did not answer within 2s" in message
    assert "\n" not in message
    assert 1.9 < took < 6


def test_coordinator_alone_times_out_naming_missing_processes():
    with pytest.raises(UserError, match=r"only 1 of 3 processes .* \(missing process ids \[1, 2\]"):
        rendezvous(_plan(free_port(), pid=0, count=3, timeout=1))


def _run_all(plans):
    errors = [None] * len(plans)

    def target(i):
        try:
            rendezvous(plans[i])
        except UserError as err:
            errors[i] = str(err)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def test_rendezvous_gathers_all_processes():
    port = free_port()
    assert _run_all([_plan(port, i, 3) for i in range(3)]) == [None, None, None]


def test_mismatched_process_counts_fail_on_both_sides():
    port = free_port()
    errors = _run_all([_plan(port, 0, 2), _plan(port, 1, 3)])
    expected = "process 1 was started with num_processes=3 but process 0 with 2"
    assert all(e is not None and expected in e for e in errors), errors


def test_duplicate_process_ids_fail():
    port = free_port()
    errors = _run_all([_plan(port, 0, 3, timeout=5), _plan(port, 1, 3), _plan(port, 1, 3)])
    assert errors[0] is not None and "used twice" in errors[0]
