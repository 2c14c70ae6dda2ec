"""results.json, samples JSONL and the console table in lm-eval 0.4.13's own layout, checked
against lm-eval's code paths (its aggregation, its sample writer, its make_table)."""

import copy
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pytest

from llm.errors import UserError
from llm.eval.results import TaskResult, console_table, read_results, results_document, write_results, write_samples

lm_eval = pytest.importorskip("lm_eval")


@dataclass
class Scores:  # the TaskScores contract: metrics, higher_is_better, samples
    metrics: dict
    higher_is_better: dict
    samples: list = field(default_factory=list)


class FakeTask:
    """What lm-eval's _collect_results reads from a Task."""

    def __init__(self, name, config, n_docs, hib):
        self.task_name, self._config, self.eval_docs, self._hib, self.VERSION = name, config, list(range(n_docs)), hib, "Yaml"

    def aggregation(self):
        from lm_eval.api.metrics import mean

        return {m: mean for m in self._hib}

    def dump_config(self):
        return self._config

    def higher_is_better(self):
        return self._hib


RAW = {
    "toy_mc": ({("acc", "none"): [1, 0, 1, 1], ("acc_norm", "none"): [0, 0, 1, 1]}, {"acc": True, "acc_norm": True}),
    "toy_gen": ({("exact_match", "take_first"): [0.0, 1.0, 1.0, 0.0]}, {"exact_match": True}),
    "toy_ppl": ({("word_perplexity", "none"): [2.0, 3.0, 4.0, 5.0]}, {"word_perplexity": False}),
}


def _config(name):
    return {"task": name, "dataset_path": "json", "num_fewshot": 2, "metric_list": [{"metric": m} for m in RAW[name][1]]}


def lm_eval_document():
    from lm_eval.evaluator_utils import _process_results

    acc = {name: {"task": FakeTask(name, _config(name), 10, hib), "raw_metrics": defaultdict(list, raw), "logged_samples": []}
           for name, (raw, hib) in RAW.items()}
    return _process_results(acc, {}, bootstrap_iters=1000)._to_eval_results()


def our_results(reference):
    return [TaskResult(name=n, scores=Scores(dict((k, v) for k, v in reference["results"][n].items() if "," in k), RAW[n][1]),
                       config=_config(n), version="Yaml", n_shot=2, n_original=10, n_effective=4, seconds=1.5)
            for n in RAW]


def test_results_document_has_lm_evals_layout():
    from lm_eval.result_schema import EvalResults, _EvalConfig

    reference = lm_eval_document()
    doc = results_document(our_results(reference), model_source="llm", model_args={"source": "runs/sft", "batch_size": 8, "limit": 4})
    for key in ("results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples"):
        assert json.dumps(doc[key]) == json.dumps(reference[key]), key  # same values, same key order
    assert doc["results"]["toy_mc"]["acc,none"] == 0.75 and doc["results"]["toy_mc"]["alias"] == "toy_mc"
    pytorch_only = {"groups", "samples", "pretty_env_info", "transformers_version", "lm_eval_version", "upper_git_hash",
                    "tokenizer_pad_token", "tokenizer_eos_token", "tokenizer_bos_token"}
    assert set(EvalResults.__annotations__) - pytorch_only <= set(doc)
    hf_only = {"model_num_parameters", "model_dtype", "model_revision", "model_sha"}
    assert set(_EvalConfig.__annotations__) - hf_only <= set(doc["config"])
    assert doc["config"]["model"] == doc["model_source"] == "llm" and doc["model_name"] == "runs/sft"
    assert doc["config"]["batch_size"] == 8 and doc["config"]["limit"] == 4 and doc["total_evaluation_time_seconds"] == "4.5"
    extra = results_document(our_results(reference), model_source="llm", model_args={}, extra={"config": {"device": "cpu"}, "git_hash": "abc"})
    assert extra["config"]["device"] == "cpu" and extra["config"]["model"] == "llm" and extra["git_hash"] == "abc"


def test_robustness_section_reports_the_drop_both_ways():
    clean = {"acc,none": 0.8, "acc_stderr,none": 0.1, "word_perplexity,none": 10.0, "word_perplexity_stderr,none": "N/A"}
    noisy = {"acc,none": 0.5, "acc_stderr,none": 0.1, "word_perplexity,none": 14.0, "word_perplexity_stderr,none": "N/A"}
    hib = {"acc": True, "word_perplexity": False}
    results = [TaskResult("t", Scores(clean, hib), {"task": "t"}, 0, 0, 4, 4, 0.1),
               TaskResult("t@typo", Scores(noisy, hib), {"task": "t"}, 0, 0, 4, 4, 0.1, perturbation="typo", clean_metrics=clean)]
    doc = results_document(results, model_source="llm", model_args={})
    assert list(doc["results"]) == ["t", "t@typo"] and doc["results"]["t@typo"]["alias"] == "t@typo"
    rob = doc["robustness"]["t@typo"]
    assert rob["task"] == "t" and rob["perturbation"] == "typo"
    assert rob["metrics"]["acc,none"] == {"clean": 0.8, "perturbed": 0.5, "drop": pytest.approx(0.3)}
    assert rob["metrics"]["word_perplexity,none"]["drop"] == pytest.approx(4.0)  # lower is better: worse by 4
    assert "robustness" not in results_document(results[:1], model_source="llm", model_args={})


def _raw_samples():
    doc = {"question": "2+2?", "choices": ["4", "5"], "label": 0}
    mc = {"doc_id": 0, "doc": doc, "target": 0, "arguments": [("Q: 2+2?\nA:", " 4"), ("Q: 2+2?\nA:", " 5")],
          "resps": [[(-1.25, True)], [(-3.5, False)]], "filtered_resps": [(-1.25, True), (-3.5, False)], "filter": "none",
          "metrics": ["acc"], "acc": 1.0}
    gen = {"doc_id": 1, "doc": doc, "target": "4", "arguments": [("Q: 2+2?\nA:", {"until": ["\n"], "max_gen_toks": 5})],
           "resps": [[" 4"]], "filtered_resps": [" 4"], "filter": "take_first", "metrics": ["exact_match"], "exact_match": 1.0}
    return [mc, gen]


def test_samples_jsonl_is_lm_evals_logged_samples(tmp_path):
    from lm_eval.utils import handle_non_serializable, hash_string

    raw = _raw_samples()
    theirs = []
    for s in copy.deepcopy(raw):  # built as lm_eval.evaluator logs a sample: hashes after "metrics", then the values
        values = {m: s.pop(m) for m in s["metrics"]}
        s.update(doc_hash=hash_string(json.dumps(s["doc"], indent=2, default=handle_non_serializable, ensure_ascii=False)),
                 prompt_hash=hash_string(s["arguments"][0][0]), target_hash=hash_string(str(s["target"])))
        theirs.append({**s, **values})
    expected = [json.dumps(s, default=handle_non_serializable, ensure_ascii=False) for s in theirs]

    result = TaskResult("toy", Scores({"acc,none": 1.0}, {"acc": True}, raw), {}, 0, 0, 2, 2, 0.1)
    path = write_samples(result, tmp_path / "ours")
    assert path.name == "samples_toy.jsonl"
    assert path.read_text().splitlines() == expected  # same keys, same order, same values
    assert raw == _raw_samples()  # the in-memory samples are left as they were
    doc = results_document([result], model_source="llm", model_args={})
    assert doc["task_hashes"]["toy"] == hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in theirs))


def test_numpy_values_become_plain_json(tmp_path):
    sample = {"doc_id": np.int64(3), "doc": {"x": np.float32(0.5), "ids": np.arange(2)}, "target": np.int64(1),
              "arguments": [("ctx", " a")], "resps": [[(np.float32(-0.5), np.bool_(True))]],
              "filtered_resps": [(np.float64(-0.5), np.bool_(True))], "filter": "none", "metrics": ["acc"], "acc": np.float64(1.0)}
    result = TaskResult("np", Scores({"acc,none": np.float64(1.0), "acc_stderr,none": np.float32(0.0)}, {"acc": np.bool_(True)}, [sample]),
                        {"num_fewshot": np.int64(0)}, 0, 0, 1, 1, 0.1)
    line = json.loads(write_samples(result, tmp_path).read_text())
    assert line["doc"] == {"x": 0.5, "ids": [0, 1]} and line["doc_id"] == 3 and line["acc"] == 1.0
    assert line["resps"] == [[[-0.5, True]]] and line["filtered_resps"] == [[-0.5, True]] and line["target"] == 1
    write_results(results_document([result], model_source="llm", model_args={}), tmp_path / "results.json")
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["results"]["np"]["acc,none"] == 1.0 and doc["higher_is_better"]["np"] == {"acc": True}


def test_write_results_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "eval" / "results.json"
    write_results({"results": {"a": {"acc,none": 0.5}}}, path)
    before = path.read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_results({"results": {"a": {"acc,none": 0.5}, "b": {"acc,none": 0.7}}}, path)
    assert path.read_text() == before  # the finished task's results are intact
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary file left
    monkeypatch.undo()
    write_results({"results": {"b": {"acc,none": 0.7}}}, path)
    assert read_results(tmp_path)["results"] == {"b": {"acc,none": 0.7}}  # found through <dir>/eval/results.json


def test_read_results_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="has no results.json"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text('{"x": 1}')
    with pytest.raises(UserError, match="no 'results' section"):
        read_results(tmp_path)


def test_console_table_is_lm_evals_make_table():
    from lm_eval.utils import make_table

    doc = {
        "results": {
            "a": {"name": "a", "alias": "a", "sample_len": 3, "acc,none": 0.5, "acc_stderr,none": "N/A",
                  "word_perplexity,none": 1234.56789, "word_perplexity_stderr,none": "N/A"},
            "bb@typo": {"name": "bb@typo", "alias": "bb@typo", "sample_len": 3, "exact_match,strict-match": 1.0,
                        "exact_match_stderr,strict-match": 0.0, "exact_match,flexible-extract": 0.2513,
                        "exact_match_stderr,flexible-extract": 0.1234},
            "c": {"name": "c", "alias": "c", "sample_len": 3, "pass@1,none": 0.2534},
        },
        "versions": {"a": 1.0, "bb@typo": "Yaml", "c": 2},
        "n-shot": {"a": 0, "bb@typo": 5, "c": 0},
        "higher_is_better": {"a": {"acc": True, "word_perplexity": False}, "bb@typo": {"exact_match": True}, "c": {}},
    }
    table = console_table(doc)
    assert table == make_table(doc)
    assert table.splitlines()[0] == "| Tasks |Version|     Filter     |n-shot|    Metric     |   |  Value  |   |Stderr|"
    assert "|a      |      1|none            |     0|acc            |↑  |   0.5000|±  |   N/A|" in table
    reference = lm_eval_document()  # pytablewriter re-rounds this Value column (0.7500 -> 0.75); we keep 4 decimals
    ours, theirs = ([[c.strip() for c in line.split("|")] for line in t.splitlines()[2:]] for t in (console_table(reference), make_table(reference)))
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert [_num(c) for c in a] == [_num(c) for c in b]


def _num(cell):
    try:
        return float(cell)
    except ValueError:
        return cell
