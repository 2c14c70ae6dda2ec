"""`!function` hooks of builtin_docstring_body.yaml (lm-eval loads this file next to the YAML)."""

from llm.eval.passk import doctest_program, pass_at_k, run_programs


def doctest_programs(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter: each completion -> the program that runs its function's doctests."""
    return [[doctest_program(doc["module"], doc["function"], doc["header"], r) for r in rs] for rs, doc in zip(resps, docs)]


def pass_at_1(references: list[str], predictions: list) -> float:
    """Metric: unbiased pass@1 over one document's programs, each run in llm.sandbox."""
    programs = predictions[0]
    programs = [programs] if isinstance(programs, str) else list(programs)
    results = run_programs(programs)
    return pass_at_k(len(results), sum(results), 1)
