"""lm-eval's response filters (filter_list): each turns the per-request response lists of a whole
task into filtered responses, in order; a pipeline applies its steps in sequence. Semantics as
lm_eval/filters/*.py in 0.4.13."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from llm.errors import UserError


def _take_first(resps, docs):
    return [r[0] for r in resps]


def _majority_vote(resps, docs):
    return [[Counter(r).most_common(1)[0][0]] for r in resps]


def _lowercase(resps, docs):
    return [[x.lower() for x in r] for r in resps]


def _uppercase(resps, docs):
    return [[x.upper() for x in r] for r in resps]


def _remove_whitespace(resps, docs):
    return [[x.strip() for x in r] for r in resps]


def _take_first_k(k: int):
    def apply(resps, docs):
        resps = list(resps)
        if len(resps[0]) < k:
            raise UserError(
                f"filter take_first_k needs {k} responses per request but got {len(resps[0])}; raise the task's `repeats`"
            )
        return [r[:k] for r in resps]

    return apply


def _regex(regex_pattern: str = r"#### (\-?[0-9\.\,]+)", group_select: int = 0, fallback: str = "[invalid]"):
    regex = re.compile(regex_pattern)

    def one(resp: Any) -> str:
        if not isinstance(resp, str):
            resp = ""
        match = regex.findall(resp)
        if not match:
            return fallback
        match = match[group_select]
        if isinstance(match, tuple):
            match = [m for m in match if m]
            match = match[0] if match else fallback
        return match.strip()

    return lambda resps, docs: [[one(x) for x in r] for r in resps]


def _map(mapping_dict: dict | None = None, default_value=None):
    mapping = mapping_dict or {}
    return lambda resps, docs: [[mapping.get(x, default_value) for x in r] for r in resps]


def _custom(filter_fn: Callable):
    return lambda resps, docs: filter_fn(resps, docs)


_NO_ARGS = {
    "take_first": _take_first,
    "majority_vote": _majority_vote,
    "lowercase": _lowercase,
    "uppercase": _uppercase,
    "remove_whitespace": _remove_whitespace,
}
_WITH_ARGS = {"take_first_k": _take_first_k, "regex": _regex, "map": _map, "custom": _custom}
FILTERS = sorted([*_NO_ARGS, *_WITH_ARGS])


@dataclass
class FilterPipeline:
    """One entry of filter_list: its name (the `,<name>` suffix of metric keys) and its steps."""

    name: str
    steps: list[Callable]

    def apply(self, resps: Sequence[list], docs: Sequence[dict]) -> list:
        out: Any = [list(r) for r in resps]
        for step in self.steps:
            out = step(out, list(docs))
        return list(out)


def build_pipeline(name: str, components: Sequence[tuple[str, dict | None]], where: str = "filter_list") -> FilterPipeline:
    """`components`: (function name, kwargs) pairs as in a task's filter_list."""
    steps = []
    for func, kwargs in components:
        kwargs = dict(kwargs or {})
        if func in _NO_ARGS:
            if kwargs:
                raise UserError(f"{where}: filter {func!r} takes no arguments, got {sorted(kwargs)}; remove them")
            steps.append(_NO_ARGS[func])
        elif func in _WITH_ARGS:
            try:
                steps.append(_WITH_ARGS[func](**kwargs))
            except TypeError as e:
                raise UserError(f"{where}: filter {func!r} got bad arguments {kwargs}: {e}; fix the filter entry") from None
        else:
            raise UserError(f"{where}: unsupported filter {func!r}; use one of {', '.join(FILTERS)} (or custom with filter_fn: !function ...)")
    return FilterPipeline(name, steps)


DEFAULT_PIPELINE = ("none", [("take_first", None)])
