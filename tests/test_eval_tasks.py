"""llm.eval.tasks against lm-evaluation-harness itself, without a model: the same YAML files give
the same requests (contexts, continuations, generation kwargs; 0-shot and 2-shot, every output
type) and, fed the same fake model responses, the same per-item metrics, aggregates and stderr."""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["DISABLE_MULTIPROC"] = "1"  # lm-eval's bootstrap in-process (same numbers)

from llm.errors import UserError  # noqa: E402
from llm.eval.tasks import Request, load_task  # noqa: E402

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()

UTILS = '''
import re

def process_docs(dataset):
    return dataset.map(lambda d: {"question": d["question"].strip() + "?", "n": len(d["choices"])})

def shout(doc):
    return doc["question"].upper()

def first_word_match(references, predictions):
    return float(predictions[0].split(" ")[0] == references[0].split(" ")[0])

def keep_digits(resps, docs):
    return [[re.sub(r"[^0-9 ]", "", r) for r in rs] for rs in resps]
'''

BASE = """
dataset_path: json
dataset_kwargs:
  data_files:
    train: {d}/train.jsonl
    validation: {d}/val.jsonl
    test: {d}/test.jsonl
training_split: train
test_split: test
"""

TASKS = {
    "mc": """
include: base.yaml
task: t_mc
output_type: multiple_choice
description: "Answer about {{{{topic}}}}.\\n\\n"
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
  - metric: acc_mutual_info
  - metric: exact_match
metadata:
  version: 2.0
""",
    "mc_same_split": """
task: t_mc_same_split
dataset_path: json
dataset_kwargs:
  data_files: {d}/test.jsonl
test_split: train
fewshot_split: train
output_type: multiple_choice
doc_to_text: !function utils.shout
doc_to_choice: choices
doc_to_target: "{{{{choices[label]}}}}"
target_delimiter: ": "
fewshot_delimiter: "\\n###\\n"
""",
    "mc_first_n": """
include: base.yaml
task: t_mc_first_n
output_type: multiple_choice
process_docs: !function utils.process_docs
doc_to_text: "{{{{question}}}} ({{{{n}}}} options)"
doc_to_choice: ["yes", "no", "maybe"]
doc_to_target: "{{{{label}}}}"
fewshot_config:
  sampler: first_n
  fewshot_delimiter: " || "
""",
    "ll": """
include: base.yaml
task: t_ll
output_type: loglikelihood
validation_split: validation
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{' ' + answer}}}}"
metric_list:
  - metric: perplexity
  - metric: acc
""",
    "roll": """
include: base.yaml
task: t_roll
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: passage
""",
    "gen": """
include: base.yaml
task: t_gen
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
repeats: 3
generation_kwargs:
  until: ["\\n", "Q:"]
  max_gen_toks: 16
  do_sample: true
  temperature: 1
filter_list:
  - name: first
    filter:
      - function: lowercase
      - function: remove_whitespace
      - function: take_first
  - name: vote
    filter:
      - function: regex
        regex_pattern: "([a-z]+) [0-9]"
      - function: majority_vote
      - function: take_first
  - name: digits
    filter:
      - function: custom
        filter_fn: !function utils.keep_digits
      - function: take_first_k
        k: 2
      - function: uppercase
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
    regexes_to_ignore: ["\\\\s+"]
  - metric: !function utils.first_word_match
    aggregation: median
    higher_is_better: true
""",
    "gen_multi": """
include: base.yaml
task: t_gen_multi
output_type: generate_until
doc_to_text: "{{{{question}}}} ="
doc_to_target: "{{{{[answer, answer.upper()]}}}}"
generation_kwargs:
  until: ["."]
metric_list:
  - metric: exact_match
""",
}


def _docs(rng: random.Random, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        k = rng.randint(2, 4)
        choices = [" ".join(rng.choices(WORDS, k=rng.randint(1, 3))) for _ in range(k)]
        out.append({
            "topic": rng.choice(WORDS), "question": " ".join(rng.choices(WORDS, k=4)), "choices": choices,
            "label": rng.randrange(k), "answer": f"{rng.choice(WORDS)} {rng.randint(0, 9)}",
            "passage": "  ".join(" ".join(rng.choices(WORDS, k=5)) for _ in range(rng.randint(1, 3))) + " é",
        })
    return out


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tasks")
    rng = random.Random(0)
    for split, n in (("train", 9), ("val", 5), ("test", 11)):
        rows = _docs(rng, n)
        if split == "test":
            rows.append(dict(rows[0]))  # a duplicate: removal of the evaluated doc drops both copies
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "utils.py").write_text(UTILS)
    (d / "base.yaml").write_text(BASE.format(d=d))
    for name, text in TASKS.items():
        (d / f"{name}.yaml").write_text(text.format(d=d))
    return d


def lm_eval_task(task_dir: Path, name: str, num_fewshot: int, seed: int = 1234):
    """lm-eval's ConfigurableTask for a YAML, set up as simple_evaluate sets it up."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    task = tm.load([name])["tasks"][name]
    if task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=seed)
    task.build_all_requests(limit=None)
    return task


def lm_eval_score(task, responses: dict[tuple[int, int], object]) -> tuple[dict, list]:
    """evaluator.evaluate's post-processing: resps (repeats copies), filters, process_results,
    _compute_task_aggregations."""
    from lm_eval.evaluator_utils import _compute_task_aggregations

    for inst in task.instances:
        r = responses[(inst.doc_id, inst.idx)]
        inst.resps = list(r) if inst.request_type == "generate_until" else [r] * inst.repeats
    task.apply_filters()
    by_doc = defaultdict(list)
    for inst in task.instances:
        by_doc[inst.doc_id].append(inst)
    raw, per_item = defaultdict(list), []
    for key in task.instances[0].filtered_resps:
        for doc_id, doc in task.doc_iterator():
            reqs = sorted(by_doc[doc_id], key=lambda x: x.idx)
            metrics = task.process_results(doc, [r.filtered_resps[key] for r in reqs])
            per_item.append((doc_id, key, metrics))
            for m, v in metrics.items():
                raw[(m, key)].append(v)
    agg, _ = _compute_task_aggregations(task, raw, 100000)
    return agg, per_item


def ours(task_dir: Path, name: str, num_fewshot: int, seed: int = 1234):
    task = load_task(task_dir / f"{name}.yaml", num_fewshot=num_fewshot, fewshot_seed=seed)
    docs = task.docs()
    return task, docs, [r for i, d in docs for r in task.requests(i, d)]


def fake_responses(reqs: list[Request], seed: int = 0) -> dict[tuple[int, int], object]:
    rng = random.Random(seed)
    out = {}
    for r in reqs:
        if r.kind == "loglikelihood":
            out[(r.doc_id, r.idx)] = (-rng.random() * 5, rng.random() < 0.4)
        elif r.kind == "loglikelihood_rolling":
            out[(r.doc_id, r.idx)] = -rng.random() * 40
        else:
            out[(r.doc_id, r.idx)] = [f"{rng.choice(WORDS[:3])} {rng.randint(0, 2)}{rng.choice(['', '!', ' '])}" for _ in range(r.repeats)]
    return out


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("shots", [0, 2])
def test_requests_and_scores_equal_lm_eval(task_dir, name, shots):
    task, docs, reqs = ours(task_dir, name, shots)
    theirs = lm_eval_task(task_dir, f"t_{name}", shots)
    assert [(r.kind, r.doc_id, r.idx, r.args) for r in reqs] == [
        (i.request_type, i.doc_id, i.idx, i.args) for i in theirs.instances
    ]
    assert [r.repeats for r in reqs] == [i.repeats if i.request_type == "generate_until" else 1 for i in theirs.instances]
    assert [d for _, d in docs] == list(theirs.eval_docs)
    resp = fake_responses(reqs)
    scores = task.score(docs, reqs, [resp[(r.doc_id, r.idx)] for r in reqs])
    agg, per_item = lm_eval_score(theirs, resp)
    assert scores.metrics == {k: v for k, v in agg.items()}
    assert [(s["doc_id"], s["filter"], {m: s[m] for m in s["metrics"]}) for s in scores.samples] == per_item
    assert scores.higher_is_better == theirs.higher_is_better()
    expect_cfg = json.loads(json.dumps(theirs.dump_config(), default=str))
    got_cfg = json.loads(json.dumps(task.config_dict()))
    if name.startswith("gen"):  # ours leaves a missing `until` missing; these files set it
        assert got_cfg["generation_kwargs"] == expect_cfg["generation_kwargs"]
    for key in ("fewshot_config", "metric_list", "filter_list", "process_docs", "doc_to_text"):
        expect_cfg.pop(key, None), got_cfg.pop(key, None)  # hold callables / objects: compared above
    assert got_cfg == expect_cfg
    assert task.version == theirs.VERSION and task.num_fewshot == shots


def test_fewshot_removes_evaluated_doc_when_fewshot_split_is_test_split(task_dir):
    task, docs, reqs = ours(task_dir, "mc_same_split", 10)
    n = len(docs)
    for doc_id, doc in docs:
        ctx = task.requests(doc_id, doc)[0].args[0]
        assert ctx.count("\n###\n") == 10
        assert ctx.count(doc["question"].upper()) == 1  # itself, only as the question
    assert n == 12


@pytest.mark.parametrize("name,shots,seed", [("mc", 3, 0), ("mc", 3, 7), ("mc_same_split", 10, 1234), ("mc_first_n", 5, 3)])
def test_other_fewshot_seed_matches_lm_eval(task_dir, name, shots, seed):
    """Includes 10 of 12 with the evaluated doc (duplicated in the pool) removed: lm-eval's resample path."""
    _, _, reqs = ours(task_dir, name, shots, seed)
    theirs = lm_eval_task(task_dir, f"t_{name}", shots, seed)
    assert [r.args for r in reqs] == [i.args for i in theirs.instances]


def test_requests_out_of_order_match_sequential(task_dir):
    task = load_task(task_dir / "mc.yaml", num_fewshot=2)
    docs = task.docs()
    late = task.requests(*docs[5])
    fresh = load_task(task_dir / "mc.yaml", num_fewshot=2)
    seq = [fresh.requests(i, d) for i, d in fresh.docs()]
    assert late == seq[5] and task.requests(*docs[0]) == seq[0]


def test_limit_as_lm_eval(task_dir):
    task = load_task(task_dir / "mc.yaml")
    assert len(task.docs()) == 12 and len(task.docs(5)) == 5 and len(task.docs(0.25)) == 3


def test_transform_touches_only_the_evaluated_question(task_dir):
    task = load_task(task_dir / "mc.yaml", num_fewshot=2)
    i, d = task.docs()[0]
    plain, loud = task.requests(i, d), task.requests(i, d, transform=str.upper)
    assert loud[0].args[0].endswith("Q: " + d["question"].upper() + "\nA:")
    assert loud[0].args[0].rsplit("\n\n", 1)[0] == plain[0].args[0].rsplit("\n\n", 1)[0]
    assert [r.args[1] for r in loud] == [r.args[1] for r in plain]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "arrow"])
def test_csv_parquet_arrow_data_as_lm_eval(tmp_path, fmt):
    import datasets

    rows = [{"q": f"question {i}", "a": str(i % 3), "x": float(i) / 2} for i in range(6)]
    ds = datasets.Dataset.from_list(rows)
    f = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        ds.to_csv(f, index=False)
    elif fmt == "parquet":
        ds.to_parquet(f)
    else:
        ds.save_to_disk(tmp_path / "saved")
        f = next((tmp_path / "saved").glob("*.arrow"))
    (tmp_path / "t.yaml").write_text(
        f"task: t_{fmt}\ndataset_path: {fmt}\ndataset_kwargs:\n  data_files:\n    test: [{f}]\ntest_split: test\n"
        "output_type: loglikelihood\ndoc_to_text: '{{q}} ({{x}})'\ndoc_to_target: ' {{a}}'\n"
    )
    task = load_task(tmp_path / "t.yaml", num_fewshot=2)
    theirs = lm_eval_task(tmp_path, f"t_{fmt}", 2)
    assert [d for _, d in task.docs()] == list(theirs.eval_docs)
    assert [r.args for i, d in task.docs() for r in task.requests(i, d)] == [i.args for i in theirs.instances]


def test_save_to_disk_directory(tmp_path):
    import datasets

    rows = [{"text": f"line {i}", "label": i % 2} for i in range(5)]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows), "train": datasets.Dataset.from_list(rows[:3])}).save_to_disk(tmp_path / "ds")
    (tmp_path / "t.yaml").write_text(
        f"task: t_disk\ndataset_path: {tmp_path / 'ds'}\ntest_split: test\ntraining_split: train\n"
        "output_type: multiple_choice\ndoc_to_text: '{{text}}'\ndoc_to_choice: ['a', 'b']\ndoc_to_target: label\n"
    )
    task = load_task(tmp_path / "t.yaml", num_fewshot=1)
    assert [d for _, d in task.docs()] == rows
    assert task.requests(0, rows[0])[1].args[1] == " b"


@pytest.mark.parametrize("data_files", ["{f}", "[{f}]", "{{train: {f}}}", "{{train: [{g}]}}"])
def test_data_files_forms(tmp_path, data_files):
    f = tmp_path / "d.jsonl"
    f.write_text('{"t": "x"}\n{"t": "y"}\n')
    (tmp_path / "t.yaml").write_text(
        f"task: t\ndataset_path: json\ndataset_kwargs:\n  data_files: {data_files.format(f=f, g=tmp_path / '*.jsonl')}\n"
        "test_split: train\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: t\n"
    )
    task = load_task(tmp_path / "t.yaml")
    assert [r.args for i, d in task.docs() for r in task.requests(i, d)] == [("x",), ("y",)]


def test_generate_until_without_until_leaves_it_absent(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"q": "x", "a": "y"}\n')
    (tmp_path / "t.yaml").write_text(
        f"task: t\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {tmp_path / 'd.jsonl'}}}}}\ntest_split: test\n"
        "output_type: generate_until\ndoc_to_text: q\ndoc_to_target: a\ngeneration_kwargs: {max_gen_toks: 4}\n"
    )
    (req,) = load_task(tmp_path / "t.yaml").requests(0, {"q": "x", "a": "y"})
    assert req.args == ("x", {"max_gen_toks": 4})


# ---------------------------------------------------------------- bad input


def _write(tmp_path: Path, body: str, rows: str = '{"q": "x", "a": "y"}\n{"q": "z", "a": "w"}\n') -> Path:
    (tmp_path / "d.jsonl").write_text(rows)
    p = tmp_path / "bad.yaml"
    p.write_text(f"task: bad\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {tmp_path / 'd.jsonl'}}}}}\ntest_split: test\n" + body)
    return p


def test_bad_output_type(tmp_path):
    p = _write(tmp_path, "output_type: ranking\ndoc_to_text: q\ndoc_to_target: a\n")
    with pytest.raises(UserError, match=r"bad.yaml: unsupported output_type 'ranking'; use one of"):
        load_task(p)


def test_bad_key_names_key_and_file(tmp_path):
    p = _write(tmp_path, "output_type: loglikelihood\ndoc_to_text: q\ndoc_to_target: a\ndoc_to_txt: q\n")
    with pytest.raises(UserError, match=r"bad.yaml: unsupported key 'doc_to_txt'"):
        load_task(p)
    p = _write(tmp_path, "output_type: loglikelihood\ndoc_to_text: q\ndoc_to_target: a\nuse_prompt: 'x'\n")
    with pytest.raises(UserError, match=r"key 'use_prompt'"):
        load_task(p)


def test_registry_keys_accepted(tmp_path):
    p = _write(tmp_path, "output_type: loglikelihood\ndoc_to_text: q\ndoc_to_target: a\ntag: [x]\ngroup: g\ntask_alias: B\n")
    assert load_task(p).config_dict()["task_alias"] == "B"


def test_template_failure_names_task_doc_and_field(tmp_path):
    p = _write(tmp_path, "output_type: loglikelihood\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}} {{missing}}'\n")
    with pytest.raises(UserError, match=r"task 'bad': doc 0: doc_to_target template '\{\{a\}\} \{\{missing\}\}' failed to render \('missing' is undefined\)"):
        load_task(p)
    p = _write(tmp_path, "output_type: loglikelihood\ndoc_to_text: '{{q.upper()}} {{extra}}'\ndoc_to_target: a\n",
               rows='{"q": "x", "a": "y", "extra": 1}\n{"q": "z", "a": "w", "extra": null}\n')
    task = load_task(p)
    task.requests(0, task.docs()[0][1])
    with pytest.raises(UserError, match=r"doc 1: doc_to_text template"):
        (lambda d: task.requests(1, {**d, "q": None}))(task.docs()[1][1])


def test_missing_data_file_and_dataset_path(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(f"task: t\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {tmp_path}/nope.jsonl}}}}\ntest_split: test\noutput_type: loglikelihood\n")
    with pytest.raises(UserError, match=r"data file '.*nope.jsonl' does not exist"):
        load_task(p)
    p.write_text("task: t\ndataset_path: some/hub_dataset\ntest_split: test\noutput_type: loglikelihood\n")
    with pytest.raises(UserError, match=r"dataset_path 'some/hub_dataset' does not exist locally"):
        load_task(p)
    with pytest.raises(UserError, match=r"task file .*missing.yaml does not exist"):
        load_task(tmp_path / "missing.yaml")


def test_num_fewshot_larger_than_fewshot_split(tmp_path):
    p = _write(tmp_path, "output_type: loglikelihood\ndoc_to_text: q\ndoc_to_target: a\nfewshot_split: test\n")
    load_task(p, num_fewshot=1)
    with pytest.raises(UserError, match=r"num_fewshot 2 needs 3 few-shot docs plus the evaluated doc.*has 2; use --num-fewshot 1 or less"):
        load_task(p, num_fewshot=2)


def test_unsupported_metric_and_filter(tmp_path):
    p = _write(tmp_path, "output_type: loglikelihood\ndoc_to_text: q\ndoc_to_target: a\nmetric_list: [{metric: bleu}]\n")
    with pytest.raises(UserError, match=r"metric 'bleu' is not supported for output_type loglikelihood"):
        load_task(p)
    p = _write(tmp_path, "output_type: generate_until\ndoc_to_text: q\ndoc_to_target: a\nfilter_list: [{name: f, filter: [{function: nope}]}]\n")
    with pytest.raises(UserError, match=r"unsupported filter 'nope'"):
        load_task(p)


@pytest.mark.parametrize("fmt, content, message", [
    ("jsonl", b'{"q": "x", "a": "y"}\n{"q": "caf\xe9", "a": "w"}\n', r"data file '.*d.jsonl' is not UTF-8 \(line 2, byte \d+\); re-encode it as UTF-8"),
    ("jsonl", b'{"q": "x", "a": "y"}\n{"q": \n', r"line 2 of .*d.jsonl is not JSON"),
    ("jsonl", b'{"q": "x", "a": "y"}\n[1, 2]\n', r"record 1 is list, not an object"),
    ("jsonl", b'[{"q": "x", "a": "y"}, {"q": }]', r"d.jsonl is not valid JSON \(line 1"),
    ("csv", b'q,a\nx,y,z\n', r"data file .*d.csv could not be read as csv"),
    ("parquet", b"not a parquet file", r"data file .*d.parquet could not be read as parquet"),
])
def test_malformed_data_files_are_named_with_the_fix(tmp_path, fmt, content, message):
    data = tmp_path / f"d.{fmt}"
    data.write_bytes(content)
    p = tmp_path / "t.yaml"
    builder = "json" if fmt == "jsonl" else fmt
    p.write_text(f"task: t\ndataset_path: {builder}\ndataset_kwargs: {{data_files: {{test: {data}}}}}\ntest_split: test\n"
                 "output_type: loglikelihood\ndoc_to_text: q\ndoc_to_target: a\n")
    with pytest.raises(UserError, match=message):
        load_task(p).docs()
