"""llm.eval.metrics / llm.eval.filters against lm-eval's own functions, and the generative metrics
lm-eval lacks (token F1, ROUGE-L) against their definitions."""

from __future__ import annotations

import json
import os
import random

import pytest

os.environ["DISABLE_MULTIPROC"] = "1"

from llm.errors import UserError  # noqa: E402
from llm.eval import metrics as M  # noqa: E402
from llm.eval.filters import build_pipeline  # noqa: E402
from llm.eval.tasks import load_task  # noqa: E402


@pytest.mark.parametrize("agg,n", [("median", 2), ("median", 23), ("perplexity", 2), ("perplexity", 23), ("nanmean", 23)])
def test_bootstrap_stderr_equals_lm_eval(agg, n):
    from lm_eval.api import metrics as L

    rng = random.Random(n)
    xs = [-rng.random() * 4 for _ in range(n)]
    ours = M.stderr(M.AGGREGATIONS[agg], xs)
    theirs = L.stderr_for_metric(getattr(L, agg), 100000)(xs)
    assert ours == theirs


def test_stderr_closed_form_and_not_available():
    from lm_eval.api import metrics as L

    xs = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert M.stderr(M.mean, xs) == L.mean_stderr(xs)
    assert M.stderr(M.mean, [1.0]) == "N/A"
    assert M.stderr(M.weighted_perplexity, [(-1.0, 2), (-3.0, 4)]) == "N/A"
    assert M.bits_per_byte([(-1.0, 2), (-3.0, 4)]) == L.bits_per_byte([(-1.0, 2), (-3.0, 4)])


@pytest.mark.parametrize("kwargs", [{}, {"ignore_case": True}, {"ignore_punctuation": True, "ignore_numbers": True},
                                    {"regexes_to_ignore": [r"\s+", "the"], "ignore_case": True}])
def test_exact_match_equals_lm_eval(kwargs):
    from lm_eval.api.metrics import exact_match_hf_evaluate

    preds, refs = ["The cat 1.", "dog", " a b", "X"], ["the cat 2", "Dog!", "ab", "X"]
    assert M.exact_match(predictions=preds, references=refs, **kwargs) == exact_match_hf_evaluate(predictions=preds, references=refs, **kwargs)


def test_token_f1_squad():
    assert M.token_f1(["The quick brown fox"], ["quick brown dog!"]) == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert M.token_f1(["a the"], [""]) == 1.0  # both empty after normalisation
    assert M.token_f1(["x"], ["y"]) == 0.0


def test_rouge_l_is_rouge_score():
    from rouge_score import rouge_scorer

    ref, pred = "the cat sat on the mat", "the cat lay on a mat"
    expect = rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure
    assert M.rouge([ref], [pred]) == expect == pytest.approx(2 * (4 / 6) * (4 / 6) / (8 / 6))


def test_filters_equal_lm_eval():
    from lm_eval.filters import build_filter_ensemble

    resps = [["The 12 apples", "the 12 apples ", "no 3"], ["  x 7", "y 8", "y 8"]]
    docs = [{}, {}]
    for comps in ([["regex", {"regex_pattern": r"(\d+)"}], ["majority_vote", None], ["take_first", None]],
                  [["lowercase", None], ["remove_whitespace", None], ["take_first_k", {"k": 2}]],
                  [["uppercase", None], ["regex", {"regex_pattern": r"([A-Z]) (\d)|(Q)", "group_select": -1, "fallback": "?"}]],
                  [["map", {"mapping_dict": {"y 8": 1}, "default_value": 0}]]):
        class Inst:
            def __init__(self, r):
                self.resps, self.doc, self.filtered_resps = r, {}, {}
        insts = [Inst(r) for r in resps]
        build_filter_ensemble("f", comps).apply(insts)
        assert build_pipeline("f", comps).apply(resps, docs) == [i.filtered_resps["f"] for i in insts]


def test_bad_filter_arguments():
    with pytest.raises(UserError, match="filter 'regex' got bad arguments"):
        build_pipeline("f", [("regex", {"pattern": "x"})])
    with pytest.raises(UserError, match="filter 'take_first' takes no arguments"):
        build_pipeline("f", [("take_first", {"k": 1})])


def test_f1_and_rouge_in_a_generate_until_task(tmp_path):
    rows = [{"q": "a", "a": "the red fox"}, {"q": "b", "a": "blue sky"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.yaml").write_text(
        f"task: t\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {tmp_path / 'd.jsonl'}}}}}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: q\ndoc_to_target: a\ngeneration_kwargs: {until: ['\\n']}\n"
        "metric_list: [{metric: f1}, {metric: rouge}, {metric: exact_match}]\n"
    )
    task = load_task(tmp_path / "t.yaml")
    docs = task.docs()
    reqs = [r for i, d in docs for r in task.requests(i, d)]
    s = task.score(docs, reqs, [["red fox"], ["blue sky"]])
    f1_0 = M.token_f1(["the red fox"], ["red fox"])
    assert s.metrics["f1,none"] == pytest.approx((f1_0 + 1.0) / 2)
    assert s.metrics["rouge,none"] == pytest.approx((M.rouge(["the red fox"], ["red fox"]) + 1.0) / 2)
    assert s.metrics["exact_match,none"] == 0.5 and s.higher_is_better == {"f1": True, "rouge": True, "exact_match": True}
