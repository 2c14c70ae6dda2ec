"""llm.eval.code_eval: lm-eval's HumanEval hooks (pass_at_k, build_predictions), offline and
sandboxed; a HumanEval-style YAML scores the same under llm.eval.tasks and under lm-eval itself."""

from __future__ import annotations

import ast
import json
import math
import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["DISABLE_MULTIPROC"] = "1"

from llm.errors import UserError  # noqa: E402
from llm.eval.code_eval import build_predictions, pass_at_k  # noqa: E402
from llm.eval.tasks import load_task  # noqa: E402

PROBLEMS = [
    {"task_id": "t/0", "entry_point": "add", "prompt": "def add(a, b):\n    \"\"\"a + b\"\"\"\n",
     "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"},
    {"task_id": "t/1", "entry_point": "last", "prompt": "def last(xs):\n    \"\"\"The last item.\"\"\"\n",
     "test": "def check(candidate):\n    assert candidate([1, 2, 3]) == 3\n"},
    {"task_id": "t/2", "entry_point": "double", "prompt": "def double(x):\n    \"\"\"2 * x\"\"\"\n",
     "test": "def check(candidate):\n    assert candidate(4) == 8\n"},
]
LOOP = "    while True:\n        pass\n"
# 4 samples per problem: 3 / 0 / 1 pass (problem 1: wrong, crash, syntax error, early exit(0);
# problem 2: three infinite loops).
COMPLETIONS = [
    ["    return a + b\n", "    return b + a\n", "    return a - b\n", "    return sum((a, b))\n"],
    ["    return xs[0]\n", "    raise ValueError\n", "    return xs[-1\n", "    import sys; sys.exit(0)\n"],
    [LOOP, "    return x * 2\n", LOOP, LOOP],
]
PASSED = [3, 0, 1]
TIMEOUT_S = 1.0

YAML = """task: code_t
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
unsafe_code: true
output_type: generate_until
test_split: test
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{test}}}}\\ncheck({{{{entry_point}}}})"
metric_list:
  - metric: !function utils.pass_at_k
    aggregation: mean
    higher_is_better: true
    k: [1, 2, 8]
    timeout_s: {timeout}
generation_kwargs:
  until: ["\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint"]
  max_gen_toks: 64
  do_sample: true
  temperature: 0.2
repeats: 4
num_fewshot: 0
filter_list:
  - name: "create_test"
    filter:
      - function: "custom"
        filter_fn: !function utils.build_predictions
metadata:
  version: 1.0
"""


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("code_task")
    (d / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    (d / "utils.py").write_text("from llm.eval.code_eval import build_predictions, pass_at_k  # noqa: F401\n")
    (d / "code_t.yaml").write_text(YAML.format(data=d / "problems.jsonl", timeout=TIMEOUT_S))
    return d


@pytest.fixture(scope="module")
def ours(task_dir):
    task = load_task(task_dir / "code_t.yaml")
    docs = task.docs()
    reqs = [r for i, d in docs for r in task.requests(i, d)]
    start = time.monotonic()
    scores = task.score(docs, reqs, [COMPLETIONS[r.doc_id] for r in reqs])
    return task, reqs, scores, time.monotonic() - start


def test_task_scores_equal_closed_form_and_loops_fail_in_time(ours):
    task, reqs, scores, seconds = ours
    assert [r.repeats for r in reqs] == [4, 4, 4]
    per_doc = {s["doc_id"]: s for s in scores.samples}
    for doc_id, c in enumerate(PASSED):
        assert per_doc[doc_id]["pass@1"] == pytest.approx(closed_form(4, c, 1), abs=1e-12)
        assert per_doc[doc_id]["pass@2"] == pytest.approx(closed_form(4, c, 2), abs=1e-12)
        assert "pass@8" not in per_doc[doc_id]  # k > repeats: no key, as code_eval
        assert per_doc[doc_id]["filtered_resps"] == [[PROBLEMS[doc_id]["prompt"] + r for r in COMPLETIONS[doc_id]]]
    m = scores.metrics
    assert m["pass@1,create_test"] == pytest.approx((0.75 + 0.0 + 0.25) / 3, abs=1e-12)
    assert m["pass@2,create_test"] == pytest.approx((1.0 + 0.0 + 0.5) / 3, abs=1e-12)
    assert set(m) == {"pass@1,create_test", "pass@1_stderr,create_test", "pass@2,create_test", "pass@2_stderr,create_test"}
    assert scores.higher_is_better == {"pass_at_k": True, "pass@1": True, "pass@2": True}
    # three parallel runs of the looping problem end at the 1 s deadline, not at the CPU limit
    assert seconds < 3 * TIMEOUT_S + 10


def _lm_eval_score(task_dir: Path):
    from collections import defaultdict

    from lm_eval.evaluator_utils import _compute_task_aggregations
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(task_dir), include_defaults=False).load(["code_t"])["tasks"]["code_t"]
    task.build_all_requests(limit=None)
    for inst in task.instances:
        inst.resps = list(COMPLETIONS[inst.doc_id])
    task.apply_filters()
    raw, per_doc = defaultdict(list), {}
    for doc_id, doc in task.doc_iterator():
        (inst,) = [i for i in task.instances if i.doc_id == doc_id]
        metrics = task.process_results(doc, [inst.filtered_resps["create_test"]])
        per_doc[doc_id] = metrics
        for k, v in metrics.items():
            raw[(k, "create_test")].append(v)
    agg, _ = _compute_task_aggregations(task, raw, 100000)
    return task, agg, per_doc


def test_same_keys_and_values_under_lm_eval(task_dir, ours):
    task, reqs, scores, _ = ours
    theirs, agg, per_doc = _lm_eval_score(task_dir)
    assert [(i.doc_id, i.args, i.repeats) for i in theirs.instances] == [(r.doc_id, r.args, r.repeats) for r in reqs]
    assert set(agg) == set(scores.metrics)
    for key, value in agg.items():
        assert scores.metrics[key] == pytest.approx(value, abs=1e-12), key
    for s in scores.samples:
        assert {k: s[k] for k in s["metrics"]} == pytest.approx(per_doc[s["doc_id"]], abs=1e-12)
    assert theirs.higher_is_better() == scores.higher_is_better


def test_build_predictions_is_lm_evals():
    """The function body of lm-eval's own humaneval utils (that module loads code_eval on import)."""
    import lm_eval

    src = (Path(lm_eval.__file__).parent / "tasks" / "humaneval" / "utils.py").read_text()
    (fn,) = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "build_predictions"]
    ns: dict = {}
    exec(compile(ast.Module([fn], []), "utils.py", "exec"), ns)
    resps, docs = [[" a", ""], ["x\n"]], [{"prompt": "p0"}, {"prompt": "p1\n"}]
    assert build_predictions(resps, docs) == ns["build_predictions"](resps, docs) == [["p0 a", "p0"], ["p1\nx\n"]]


def test_pass_at_k_direct():
    refs = ["assert add(2, 3) == 5", "assert f() == 1"]
    preds = [["def add(a, b): return a * b", "def add(a, b): return a + b"], ["def f():\n    while True: pass"]]
    start = time.monotonic()
    # an int k, several problems in one call (code_eval's shape); pass@2 is dropped (problem 2 has 1)
    assert pass_at_k(refs, preds, k=1, timeout_s=TIMEOUT_S) == {"pass@1": pytest.approx((0.5 + 0.0) / 2)}
    assert pass_at_k(refs[:1], preds[:1], k=[1, 2]) == {"pass@1": 0.5, "pass@2": 1.0}
    assert time.monotonic() - start < TIMEOUT_S + 10
    for bad in (0, [], [1, True], "1"):
        with pytest.raises(UserError, match="k="):
            pass_at_k(refs, preds, k=bad)
    with pytest.raises(UserError, match="1 predictions for 2 references"):
        pass_at_k(refs, preds[:1])


class _SamplingModel:
    """generate_until answers each call for a doc with that doc's next completion (a stand-in for
    sampling); records how many calls each prompt got."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def generate_until(self, requests):
        out = []
        for context, kwargs in requests:
            doc_id = next(i for i, p in enumerate(PROBLEMS) if p["prompt"] == context)
            j = self.calls.get(context, 0)
            self.calls[context] = j + 1
            out.append(COMPLETIONS[doc_id][j])
        return out


def test_llm_eval_runner_draws_repeats_samples(task_dir, ours):
    """repeats: 4 with do_sample: true -> the runner asks the model for 4 generations per doc and
    scores them as the task does."""
    from llm.eval.runner import evaluate_task

    model = _SamplingModel()
    result = evaluate_task(model, load_task(task_dir / "code_t.yaml"))
    assert model.calls == {p["prompt"]: 4 for p in PROBLEMS}
    assert result.scores.metrics == ours[2].metrics


def test_lm_evals_own_humaneval_yamls_run_offline(tmp_path):
    """lm-eval's shipped humaneval.yaml and humaneval_64.yaml (include:), with only the dataset
    lines pointed at local data, load and score through llm.eval.tasks with our utils.py."""
    import lm_eval

    src = Path(lm_eval.__file__).parent / "tasks" / "humaneval"
    data = tmp_path / "humaneval.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    base = (src / "humaneval.yaml").read_text()
    assert "dataset_path: openai/openai_humaneval\n" in base
    local = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
    (tmp_path / "humaneval.yaml").write_text(base.replace("dataset_path: openai/openai_humaneval\n", local))
    (tmp_path / "humaneval_64.yaml").write_text((src / "humaneval_64.yaml").read_text())
    (tmp_path / "utils.py").write_text("from llm.eval.code_eval import build_predictions, pass_at_k  # noqa: F401\n")
    # greedy: one sample per problem, the first completion (3 of the 4 add() ones pass)
    task = load_task(tmp_path / "humaneval.yaml")
    docs = task.docs()[:2]
    reqs = [r for i, d in docs for r in task.requests(i, d)]
    assert [r.args[1]["do_sample"] for r in reqs] == [False, False]
    scores = task.score(docs, reqs, [[COMPLETIONS[r.doc_id][0]] for r in reqs])
    assert scores.metrics["pass@1,create_test"] == 0.5  # add() passes, last() returns xs[0]
    # 64 samples of problem 0 (48 pass) and problem 1 (16 pass), k = 2, 8, 16, 32, 64
    task = load_task(tmp_path / "humaneval_64.yaml")
    docs = task.docs()[:2]
    reqs = [r for i, d in docs for r in task.requests(i, d)]
    assert [r.repeats for r in reqs] == [64, 64] and reqs[0].args[1]["temperature"] == 0.2
    samples = [COMPLETIONS[0] * 16, ["    return xs[-1]\n", "    return 0\n", "    return None\n", "    return xs[0]\n"] * 16]
    scores = task.score(docs, reqs, samples)
    for k in (2, 8, 16, 32, 64):
        want = (closed_form(64, 48, k) + closed_form(64, 16, k)) / 2
        assert scores.metrics[f"pass@{k},create_test"] == pytest.approx(want, abs=1e-12)
