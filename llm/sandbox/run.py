"""run_code and SandboxPool: the sandbox's public entry points."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

from llm.errors import ConfigError
from llm.sandbox import detect
from llm.sandbox.limits import SandboxLimits, SandboxResult
from llm.sandbox.process import execute

_DEFAULT = SandboxLimits()


def run_code(source: str, limits: SandboxLimits = _DEFAULT, *, stdin: str = "") -> SandboxResult:
    """Run untrusted Python `source` in the strongest isolation this machine allows (see
    llm.sandbox's docstring). Never raises for anything the code does: its fate is the status."""
    mode, _ = detect.current()
    return execute(source, limits, stdin, mode)


class SandboxPool:
    """A thread pool; each thread waits on one sandboxed subprocess, so `workers` programs run at
    once (they are separate processes: no GIL contention)."""

    def __init__(self, workers: int, limits: SandboxLimits = _DEFAULT):
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"SandboxPool workers={workers!r}: give an int >= 1")
        self.limits = limits
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sandbox")

    def submit(self, source: str, **kw) -> concurrent.futures.Future:
        """A Future of run_code(source, **kw); limits default to the pool's."""
        kw.setdefault("limits", self.limits)
        return self._pool.submit(run_code, source, **kw)

    def map(self, sources: Sequence[str]) -> list[SandboxResult]:
        futures = [self.submit(s) for s in sources]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
