"""builtin:docstring: score a generated function body against its signature and docstring.

The row's header (decorators, signature, docstring) + the completion is the candidate source:
  0.0   it does not parse (ast)
  0.25  it parses but defines no top-level `def <name>` with a body after the docstring (or it
        does not compile, e.g. an unindented body), or its doctests ran out of time or memory
  0.5   it defines the function: the most a function without doctest examples can score
  0.5 + 0.4 x the share of doctest examples that pass, when some fail or the code errors
  1.0   every example of the docstring passes, run in llm.sandbox against the function's own
        module namespace (its imports and helpers), only on rows whose original body passes
        them in the sandbox (the task checks this when it is built; column "doctest")
Doctests run in parallel subprocesses (a SandboxPool of rl.reward_workers), each limited to
rl.sandbox_timeout_s and rl.sandbox_memory_mb. The harness reads a per-call nonce from stdin and
prints it with its counts, so printing alone does not forge a pass; the sandbox protects the
machine, it does not make the harness tamper-proof against code that inspects its own process.
"""

from __future__ import annotations

import ast
import dataclasses
import secrets

from llm.sandbox.doctest_program import doctest_program

PARSE_FAIL, PARSES, DEFINES, ALL_PASS = 0.0, 0.25, 0.5, 1.0
PASS_SHARE = 0.4  # 0.5 + 0.4 x examples passed / examples, below 1.0 unless all pass



def static_score(source: str, name: str) -> float:
    """0.0 / 0.25 / 0.5 as above, without running anything."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return PARSE_FAIL
    defines = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name and len(n.body) >= 2
                  for n in tree.body)
    if not defines:
        return PARSES
    try:
        compile(tree, "<completion>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return PARSES
    return DEFINES


def harness(module: str, name: str, header: str, completion: str) -> str:
    """Python source that runs the docstring's examples against header + completion."""
    return doctest_program(module, name, header, completion)


def doctest_score(result, nonce: str) -> float:
    """The score of one sandbox run of `harness` (a llm.sandbox SandboxResult)."""
    if result.status in ("timeout", "memory", "killed"):
        return PARSES
    for line in reversed(result.stdout.splitlines()):
        parts = line.split()
        if len(parts) == 3 and parts[0] == nonce and result.ok:
            tries, failures = int(parts[1]), int(parts[2])
            if tries and not failures:
                return ALL_PASS
            return DEFINES + PASS_SHARE * (tries - failures) / tries if tries else DEFINES
    return DEFINES  # the definition or the harness raised: it defined the function, nothing passed


@dataclasses.dataclass(frozen=True)
class DocstringReward:
    """The builtin:docstring reward function (rows need columns header, function, module, doctest)."""

    timeout_s: float = 2.0
    memory_mb: int = 256
    workers: int = 2

    def limits(self):
        from llm.sandbox import SandboxLimits

        return SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb)

    def __call__(self, prompts: list[str], completions: list[str], header: list, function: list, module: list,
                 doctest: list, **_) -> list[float | None]:
        from llm.sandbox import SandboxPool

        scores: list[float | None] = []
        runs = []  # (row, future, nonce)
        with SandboxPool(max(1, min(self.workers, len(completions))), self.limits()) as pool:
            for i, completion in enumerate(completions):
                if header[i] is None or function[i] is None:
                    scores.append(None)
                    continue
                score = static_score(header[i] + completion, function[i])
                scores.append(score)
                if score == DEFINES and doctest[i]:
                    nonce = secrets.token_hex(16)
                    source = harness(module[i], function[i], header[i], completion)
                    runs.append((i, pool.submit(source, stdin=nonce + "\n"), nonce))
            for i, future, nonce in runs:
                scores[i] = doctest_score(future.result(), nonce)
        return scores

    def best(self, columns: dict) -> float:
        """The most this row can score."""
        return ALL_PASS if columns.get("doctest") else DEFINES


@dataclasses.dataclass(frozen=True)
class DocstringSuccess:
    """Solved = the row's best score: every doctest passes; without doctests, defines the function."""

    reward: DocstringReward

    def __call__(self, completion: str, columns: dict) -> bool:
        one = {k: [columns.get(k)] for k in ("header", "function", "module", "doctest")}
        return self.reward([""], [completion], **one)[0] == self.reward.best(columns)
