"""The runner's dispatch: one batched call per request kind, answers back in request order, and
`repeats` drawn as separate samples only when the generation kwargs sample."""

from __future__ import annotations

import pytest

from llm.errors import UserError
from llm.eval.runner import answer, resolve_task_paths
from llm.eval.tasks import Request


class _Recorder:
    def __init__(self):
        self.calls = []

    def loglikelihood(self, requests):
        self.calls.append(("loglikelihood", list(requests)))
        return [(-float(len(c)), True) for _, c in requests]

    def loglikelihood_rolling(self, texts):
        self.calls.append(("rolling", list(texts)))
        return [-float(len(t)) for t in texts]

    def generate_until(self, requests):
        self.calls.append(("generate", list(requests)))
        return [f"{ctx}#{i}" for i, (ctx, _) in enumerate(requests)]


@pytest.mark.parametrize("kwargs, draws", [
    ({"until": ["\n"]}, 1),  # greedy: one generation, repeated
    ({"until": ["\n"], "do_sample": False, "temperature": 0.7}, 1),
    ({"until": ["\n"], "do_sample": True}, 3),
    ({"until": ["\n"], "temperature": 0.5}, 3),  # sampling without do_sample: the engine samples, so 3 draws
])
def test_repeats_are_drawn_only_when_sampling(kwargs, draws):
    model = _Recorder()
    [got] = answer(model, [Request("generate_until", ("ctx", kwargs), 0, 0, 3)])
    assert len(model.calls) == 1 and len(model.calls[0][1]) == draws
    assert len(got) == 3 and len(set(got)) == draws


def test_answers_come_back_in_request_order_one_call_per_kind():
    model = _Recorder()
    requests = [Request("loglikelihood", ("a", "bb"), 0, 0), Request("loglikelihood_rolling", ("xyz",), 1, 0),
                Request("loglikelihood", ("a", "c"), 0, 1), Request("generate_until", ("q", {"until": ["."]}), 2, 0)]
    got = answer(model, requests)
    assert got == [(-2.0, True), -3.0, (-1.0, True), ["q#0"]]
    assert [kind for kind, _ in model.calls] == ["loglikelihood", "rolling", "generate"]


def test_task_paths(tmp_path):
    (tmp_path / "a.yaml").write_text("task: a\n")
    (tmp_path / "b.yml").write_text("task: b\n")
    assert resolve_task_paths(str(tmp_path), tmp_path / "builtin") == [tmp_path / "a.yaml", tmp_path / "b.yml"]
    with pytest.raises(UserError, match="holds no .yaml"):
        resolve_task_paths(str(tmp_path / "builtin_empty") if (tmp_path / "builtin_empty").mkdir() is None else "", tmp_path)
    with pytest.raises(UserError, match="no tasks given"):
        resolve_task_paths(" , ", tmp_path)
