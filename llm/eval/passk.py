"""pass@k for code tasks: the unbiased estimator of Chen et al. (2021) and sandboxed test runs.

A completion passes when its program (completion + tests) runs to the end in llm.sandbox
(timeout, memory limit, no network, temp dir) and prints the nonce it read from stdin first: a
crash, a timeout, or an early `sys.exit(0)` all count as failures. The nonce stops accidental
passes; it is not a guard against code that inspects its own process (see llm.sandbox).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

from llm.errors import UserError
from llm.sandbox import SandboxLimits, SandboxPool, SandboxResult, run_code
from llm.sandbox.doctest_program import doctest_program

__all__ = ["doctest_program", "pass_at_k", "passed", "passes", "program_with_tests", "run_program", "run_programs"]

DEFAULT_LIMITS = SandboxLimits(timeout_s=5.0, memory_mb=512)

# Reads the nonce before any untrusted code runs (so the code cannot consume stdin first).
_PRELUDE = "import sys as _llm_sys\n_llm_nonce = _llm_sys.stdin.readline().strip()\n"
_EPILOGUE = "\n_llm_sys.stdout.flush()\n_llm_sys.__stdout__.write('\\n' + _llm_nonce + ' 1 0\\n')\n"



def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k), computed as
    1 - prod_{i=n-c+1}^{n} (1 - k/i) so large n does not overflow (Chen et al. 2021, Codex)."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise UserError(f"pass_at_k {name}={value!r}: give an int")
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise UserError(f"pass_at_k(n={n}, c={c}, k={k}): need n >= 1, 0 <= c <= n and 1 <= k <= n (draw at least k samples)")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def program_with_tests(completion: str, tests: str) -> str:
    """The program that runs `completion` then `tests` (asserts) and, when it gets that far,
    prints the nonce it was given on stdin."""
    return _PRELUDE + completion + "\n" + tests + _EPILOGUE


def passed(result: SandboxResult, nonce: str) -> bool:
    """A run of program_with_tests / doctest_program passed: it exited 0 and its last report line
    carries the nonce, at least one test ran and none failed."""
    if not result.ok:
        return False
    for line in reversed(result.stdout.splitlines()):
        parts = line.split()
        if len(parts) == 3 and parts[0] == nonce and parts[1].isdigit() and parts[2].isdigit():
            return int(parts[1]) > 0 and int(parts[2]) == 0
    return False


def run_program(program: str, limits: SandboxLimits = DEFAULT_LIMITS) -> bool:
    """Run one program_with_tests / doctest_program in the sandbox: True when it passed."""
    nonce = secrets.token_hex(16)
    return passed(run_code(program, limits, stdin=nonce + "\n"), nonce)


def run_programs(programs: Sequence[str], limits: SandboxLimits = DEFAULT_LIMITS, workers: int = 2) -> list[bool]:
    """run_program over many programs, `workers` sandboxes at once."""
    if not programs:
        return []
    nonces = [secrets.token_hex(16) for _ in programs]
    with SandboxPool(max(1, min(workers, len(programs))), limits) as pool:
        futures = [pool.submit(p, stdin=n + "\n") for p, n in zip(programs, nonces)]
        return [passed(f.result(), n) for f, n in zip(futures, nonces)]


def passes(completion: str, tests: str, limits: SandboxLimits = DEFAULT_LIMITS) -> bool:
    """Does `completion` pass `tests` (Python asserts) in the sandbox? Timeouts, crashes,
    memory errors and early exits are failures."""
    return run_program(program_with_tests(completion, tests), limits)
