"""pass@k: the estimator against the closed form, and sandboxed test runs."""

import math
import time

import pytest

from llm.errors import UserError
from llm.eval.passk import doctest_program, pass_at_k, passes, run_programs
from llm.sandbox import SandboxLimits


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_equals_closed_form():
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), rel=1e-12, abs=1e-12), (n, c, k)
    assert pass_at_k(200, 0, 10) == 0.0  # no passing sample
    assert pass_at_k(200, 195, 10) == 1.0  # n - c < k: every k-subset holds a pass
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c/n
    assert pass_at_k(1000, 7, 100) == pytest.approx(closed_form(1000, 7, 100), rel=1e-12)


@pytest.mark.parametrize("args", [(0, 0, 1), (5, 6, 1), (5, 2, 6), (5, 2, 0), (5.0, 2, 1)])
def test_pass_at_k_rejects_bad_counts(args):
    with pytest.raises(UserError, match="pass_at_k"):
        pass_at_k(*args)


def test_sandboxed_tests_pass_and_fail():
    good = "def add(a, b):\n    return a + b\n"
    assert passes(good, "assert add(2, 3) == 5")
    assert not passes("def add(a, b):\n    return a * b\n", "assert add(2, 3) == 5")
    assert not passes("import sys\nsys.exit(0)\n" + good, "assert add(2, 3) == 5")  # leaving early is no pass
    assert not passes("def add(a, b) return", "assert add(2, 3) == 5")  # syntax error


def test_infinite_loop_fails_within_timeout():
    limits = SandboxLimits(timeout_s=1.0)
    start = time.monotonic()
    assert not passes("def f():\n    while True:\n        pass\n", "f()", limits)
    assert time.monotonic() - start < 10.0


def test_doctest_program_counts_examples():
    header = 'def double(x):\n    """Twice x.\n\n    >>> double(2)\n    4\n    >>> double(-1)\n    -2\n    """\n'
    right, wrong = "    return 2 * x\n", "    return x + 2\n"
    none = 'def f():\n    """No examples."""\n'
    programs = [doctest_program("", "double", header, right), doctest_program("", "double", header, wrong),
                doctest_program("", "f", none, "    return 1\n")]
    assert run_programs(programs) == [True, False, False]  # no example ran: not a pass
