"""doc_to_text / doc_to_target / doc_to_choice as ConfigurableTask evaluates them: a field name
(one of the eval split's columns), a Jinja template (lm-eval's environment: StrictUndefined,
trailing newlines kept, a `regex_replace` filter), an int, a list, or a `!function`."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

from jinja2 import BaseLoader, Environment, StrictUndefined

from llm.errors import UserError


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, string, count=count)


ENV = Environment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)  # noqa: S701 (prompts, not HTML)
ENV.filters["regex_replace"] = _regex_replace
_CACHE: dict[str, Any] = {}


@dataclass
class Where:
    """Which task, doc and field a template is rendered for (for the error message)."""

    task: str
    doc: str  # e.g. "doc 3" or "few-shot doc 7"


def apply_template(template: str, doc: dict, where: Where, field: str) -> str:
    try:
        compiled = _CACHE.get(template)
        if compiled is None:
            compiled = _CACHE[template] = ENV.from_string(template)
        return compiled.render(**doc)
    except Exception as e:  # jinja raises many types; all are the template's or the doc's fault
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"task {where.task!r}: {where.doc}: {field} template {template!r} failed to render ({msg}); fix the template or the data") from None


def _call(fn, doc: dict, where: Where, field: str):
    try:
        return fn(doc)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"task {where.task!r}: {where.doc}: {field} function {getattr(fn, '__name__', fn)} failed ({type(e).__name__}: {e}); fix it") from e


class Renderer:
    """Holds what the doc_to_* rules depend on: the eval split's columns and whether doc_to_choice is set."""

    def __init__(self, task: str, features: list[str], has_choice: bool):
        self.task, self.features, self.has_choice = task, features, has_choice

    def text(self, doc: dict, spec: Any, where: Where) -> Any:
        if isinstance(spec, int):
            return spec
        if isinstance(spec, str):
            if spec in self.features:
                return doc[spec]
            out = apply_template(spec, doc, where, "doc_to_text")
            return ast.literal_eval(out) if out.isdigit() and self.has_choice else out
        if callable(spec):
            return _call(spec, doc, where, "doc_to_text")
        if spec is None:
            raise UserError(f"task {self.task!r}: doc_to_text is not set; add doc_to_text (a field name or a Jinja template)")
        raise UserError(f"task {self.task!r}: doc_to_text {spec!r} must be a field, template, int or !function")

    def target(self, doc: dict, spec: Any, where: Where) -> Any:
        if isinstance(spec, int):
            return spec
        if isinstance(spec, str):
            if spec in self.features:
                return doc[spec]
            out = apply_template(spec, doc, where, "doc_to_target")
            if out.isdigit() and self.has_choice:
                return ast.literal_eval(out)
            if len(out) >= 2 and out[0] == "[" and out[-1] == "]":
                try:
                    return ast.literal_eval(out)
                except (SyntaxError, ValueError):
                    return out
            return out
        if isinstance(spec, list):
            return spec
        if callable(spec):
            return _call(spec, doc, where, "doc_to_target")
        if spec is None:
            raise UserError(f"task {self.task!r}: doc_to_target is not set; add doc_to_target (a field name or a Jinja template)")
        raise UserError(f"task {self.task!r}: doc_to_target {spec!r} must be a field, template, int, list or !function")

    def choice(self, doc: dict, spec: Any, where: Where) -> list:
        if isinstance(spec, str):
            if spec in self.features:
                return doc[spec]
            out = apply_template(spec, doc, where, "doc_to_choice")
            try:
                return ast.literal_eval(out)
            except (SyntaxError, ValueError):
                raise UserError(
                    f"task {self.task!r}: {where.doc}: doc_to_choice template {spec!r} rendered {out[:80]!r}, not a Python list; make it render a list"
                ) from None
        if isinstance(spec, list):
            return spec
        if isinstance(spec, dict):
            return list(spec.values())
        if callable(spec):
            return _call(spec, doc, where, "doc_to_choice")
        raise UserError(f"task {self.task!r}: doc_to_choice {spec!r} must be a field, template, list, dict or !function")

    def field(self, doc: dict, spec: Any, where: Where, name: str) -> Any:
        """lm-eval's resolve_field (description, gen_prefix): a column, else a template."""
        if spec:
            return doc[spec] if spec in doc else apply_template(spec, doc, where, name)
        return None
