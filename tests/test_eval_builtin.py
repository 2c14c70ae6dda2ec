"""The built-in suite: held-out, decontaminated, deterministic data, and YAML files that
lm-eval itself loads and builds the same requests for as llm.eval.tasks (no model needed)."""

import json
import os
from pathlib import Path

import pytest

from llm.data.builtin import build_builtin, module_name
from llm.data.curate.decontam import Decontaminator
from llm.data.sources import stdlib_files, stdlib_root
from llm.data.split import is_validation
from llm.errors import UserError
from llm.eval.builtin import SUMMARY, TASKS, materialize_builtin
from llm.eval.tasks import load_task

# A few held-out modules (statistics has doctests its own functions pass) and a few training ones.
SUBSET = ("statistics.py", "bisect.py", "fnmatch.py", "copy.py", "heapq.py", "textwrap.py", "shlex.py", "colorsys.py")


def _text(task: str, doc: dict) -> str:
    if task == "builtin_perplexity":
        return doc["text"]
    if task == "builtin_docstring_body":
        return doc["header"] + doc["body"]
    return doc["context"] + (" " if task == "builtin_docstring_name" else "") + doc["choices"][doc["label"]]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    return out, materialize_builtin(out)


def test_sizes_held_out_and_decontaminated(suite, tmp_path):
    out, paths = suite
    assert [p.name for p in paths] == [f"{t}.yaml" for t in TASKS] and (out / "utils.py").is_file()
    summary = json.loads((out / SUMMARY).read_text())["tasks"]
    root = stdlib_root()
    train_texts = [{"text": Path(f).read_text(encoding="utf-8")} for f in stdlib_files()
                   if not is_validation(module_name(f, root), 0.1)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_texts))
    train = Decontaminator(str(tmp_path / "train.jsonl"))  # llm data curate's own check, independent of ours
    for task in TASKS:
        test = _rows(out / f"{task}.test.jsonl")
        s = summary[task]
        assert len(test) == s["items"] and s["examined"] == s["items"] + s["contaminated"] + s.get("own_doctests_fail", 0)
        assert all(is_validation(d["module"], 0.1) for d in test), task
        assert all(train.overlaps(_text(task, d)) == 0 for d in test), task
        if task != "builtin_perplexity":
            fewshot = _rows(out / f"{task}.train.jsonl")
            assert len(fewshot) == s["fewshot_items"] == 32 and not any(is_validation(d["module"], 0.1) for d in fewshot)
    assert summary["builtin_perplexity"]["contaminated"] > 0  # e.g. the generated encodings.* tables
    assert 20 <= summary["builtin_perplexity"]["items"] <= 64
    assert summary["builtin_next_line"]["items"] == summary["builtin_docstring_name"]["items"] == 200
    assert summary["builtin_docstring_body"]["items"] >= 5
    for task in ("builtin_next_line", "builtin_docstring_name"):
        for d in _rows(out / f"{task}.test.jsonl"):
            assert len(d["choices"]) == len(set(d["choices"])) == 4 and 0 <= d["label"] < 4
    assert all(len(d["text"]) <= 2000 for d in _rows(out / "builtin_perplexity.test.jsonl"))


def test_deterministic_and_seeded(suite, tmp_path):
    out, _ = suite
    again = tmp_path / "again"
    materialize_builtin(again)
    for f in sorted(out.iterdir()):
        text = f.read_text()
        assert text.replace(str(out), "DIR") == (again / f.name).read_text().replace(str(again), "DIR"), f.name
    other = tmp_path / "other"
    materialize_builtin(other, files=[str(stdlib_root() / f) for f in SUBSET], seed=7)
    subset_same_seed = tmp_path / "subset"
    materialize_builtin(subset_same_seed, files=[str(stdlib_root() / f) for f in SUBSET])
    assert (other / "builtin_next_line.test.jsonl").read_text() != (subset_same_seed / "builtin_next_line.test.jsonl").read_text()


def test_from_a_corpus_manifest_equals_from_stdlib(tmp_path):
    files = [str(stdlib_root() / f) for f in SUBSET]
    build_builtin(tmp_path / "corpus", files=files)
    a = materialize_builtin(tmp_path / "a", corpus=tmp_path / "corpus", next_line_items=20, name_items=20, fewshot_items=4)
    b = materialize_builtin(tmp_path / "b", files=files, next_line_items=20, name_items=20, fewshot_items=4)
    for pa, pb in zip(a, b):
        for split in ("test", "train"):
            fa, fb = pa.with_suffix(f".{split}.jsonl"), pb.with_suffix(f".{split}.jsonl")
            assert fa.exists() == fb.exists() and (not fa.exists() or fa.read_text() == fb.read_text())
    assert _rows(tmp_path / "a" / "builtin_docstring_body.test.jsonl")  # statistics' doctests pass


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="manifest"):
        materialize_builtin(tmp_path / "x", corpus=tmp_path)
    with pytest.raises(UserError, match="next_line_items=0"):
        materialize_builtin(tmp_path / "x", next_line_items=0)


@pytest.mark.slow
def test_lm_eval_loads_and_scores_the_yaml_files(suite, monkeypatch):
    lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
    monkeypatch.setitem(os.environ, "HF_DATASETS_OFFLINE", "1")
    monkeypatch.setitem(os.environ, "HF_HUB_OFFLINE", "1")
    out, _ = suite
    loaded = lm_eval_tasks.TaskManager(include_path=str(out)).load(list(TASKS))["tasks"]
    summary = json.loads((out / SUMMARY).read_text())["tasks"]
    kinds = {"builtin_perplexity": ("loglikelihood_rolling", 1), "builtin_next_line": ("loglikelihood", 4),
             "builtin_docstring_name": ("loglikelihood", 4), "builtin_docstring_body": ("generate_until", 1)}
    for name, task in ((t.config.task, t) for t in loaded.values()):
        task.set_fewshot_seed(1234)
        if name != "builtin_perplexity":
            task.set_config("num_fewshot", 2)
        task.build_all_requests(limit=None, rank=0, world_size=1)
        kind, per_doc = kinds[name]
        assert {i.request_type for i in task.instances} == {kind}
        assert len(task.instances) == per_doc * summary[name]["items"]
        ours = load_task(out / f"{name}.yaml", num_fewshot=0 if name == "builtin_perplexity" else 2, fewshot_seed=1234)
        requests = {(r.doc_id, r.idx): (r.kind, r.args) for d in ours.docs() for r in ours.requests(*d)}
        assert requests == {(i.doc_id, i.idx): (i.request_type, i.arguments) for i in task.instances}, name
    body = next(t for t in loaded.values() if t.config.task == "builtin_docstring_body")
    for right in (True, False):
        for inst in body.instances:
            inst.resps = [inst.doc["body"] if right else "    return None\n"]
        body.apply_filters()
        scores = [body.process_results(i.doc, [i.filtered_resps["doctest"]])["pass_at_1"] for i in body.instances]
        assert scores == [1.0 if right else 0.0] * len(scores)
