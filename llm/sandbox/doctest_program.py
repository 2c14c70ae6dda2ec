"""The program that runs a function's docstring examples in the sandbox: one home for the RL
docstring reward and the eval suite's pass@1."""

from __future__ import annotations

import ast

# The completion runs in the namespace of the stdlib module it came from (its imports and
# helpers), or a bare one for module ""; the last stdout line is `nonce tries failures`, with
# the nonce read from stdin before any untrusted code runs.
_PROGRAM = '''import sys, doctest, importlib
def _run(nonce):
    ns = dict(vars(importlib.import_module({module!r}))) if {module!r} else {{"__name__": "__main__"}}
    exec(compile({source!r}, "<completion>", "exec"), ns)
    test = doctest.DocTestParser().get_doctest({docstring!r}, ns, {name!r}, "<docstring>", 0)
    runner = doctest.DocTestRunner(verbose=False)
    runner.run(test, out=lambda s: None)
    sys.stdout.flush()
    sys.__stdout__.write("\\n%s %d %d\\n" % (nonce, runner.tries, runner.failures))
_run(sys.stdin.readline().strip())
'''


def function_docstring(header: str) -> str | None:
    """The raw docstring of the header's function (None when it has none or does not parse)."""
    try:
        node = ast.parse(header).body[0]
    except (SyntaxError, ValueError, IndexError):
        return None
    return ast.get_docstring(node, clean=False) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def doctest_program(module: str, name: str, header: str, completion: str) -> str:
    """Python source that runs the examples of `header`'s docstring against header + completion
    and prints `nonce tries failures` (the nonce comes on stdin)."""
    return _PROGRAM.format(module=module, source=header + completion, docstring=function_docstring(header) or "", name=name)
