"""`llm eval` from the command line: bad inputs give one line and a non-zero exit, results of the
tasks already finished stay on disk, a generation task without stop strings stops at EOS (and
says so), and --perturb reports the drop against the clean score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from finetune_fixtures import llm_session
from interop_models import build_hf_model, train_tokenizer


def _data(root: Path) -> str:
    docs = [{"q": f"What is {i} plus one?", "choices": [str(i + 1), str(i), str(i + 2)], "label": 0, "a": str(i + 1)} for i in range(6)]
    (root / "qa.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return f"""dataset_path: json
dataset_kwargs:
  data_files:
    train: {root}/qa.jsonl
    test: {root}/qa.jsonl
training_split: train
test_split: test
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_eval")
    model = root / "model"
    build_hf_model("llama", model, tokenizer_dir=train_tokenizer(root / "tok"))
    bare = root / "bare"  # the same model without its tokenizer files
    bare.mkdir()
    for f in model.iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copyfile(f, bare / f.name)
    data = _data(root)
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "good.yaml").write_text(f"task: good\n{data}output_type: multiple_choice\ndoc_to_text: \"Q: {{{{q}}}}\\nA:\"\n"
                                     "doc_to_choice: choices\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n")
    rows = [{"question": f"Is {i} even?", "choices": ["yes", "no"], "label": i % 2} for i in range(5)]
    rows[3]["question"] = None  # doc 3 cannot render (None has no .upper()): found only once the task runs
    (root / "broken.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "broken.yaml").write_text(f"task: broken\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root}/broken.jsonl\n"
                                       "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"Q: {{question.upper()}}\"\n"
                                       "doc_to_choice: choices\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n")
    (tasks / "odd_type.yaml").write_text(f"task: odd\n{data}output_type: ranking\ndoc_to_text: q\n")
    (tasks / "odd_key.yaml").write_text(f"task: oddkey\n{data}output_type: multiple_choice\ndoc_to_text: q\n"
                                        "doc_to_choice: choices\ndoc_to_target: label\nprompt_magic: true\n")
    (tasks / "gen.yaml").write_text(f"task: gen\n{data}output_type: generate_until\ndoc_to_text: \"Q: {{{{q}}}}\\nA:\"\n"
                                    "doc_to_target: \" {{a}}\"\ngeneration_kwargs:\n  max_gen_toks: 4\nmetric_list:\n  - metric: exact_match\n")
    (tasks / "missing_data.yaml").write_text("task: nodata\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                             f"    test: {root}/nope.jsonl\ntest_split: test\noutput_type: loglikelihood\n"
                                             "doc_to_text: q\ndoc_to_target: a\n")
    return root, model, bare, tasks


def _last_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_bad_inputs_fail_with_one_line_and_keep_finished_results(setup):
    root, model, bare, tasks = setup
    out = root / "out"
    t = lambda name: str(tasks / name)  # noqa: E731
    runs = llm_session(
        ["eval", "--checkpoint", str(model), "--tasks", f"{t('good.yaml')},{t('broken.yaml')}", "--output", str(out / "results.json")],
        ["eval", "--checkpoint", str(model), "--tasks", t("nothing.yaml")],
        ["eval", "--checkpoint", str(model), "--tasks", t("good.yaml"), "--num-fewshot", "50", "--output", str(root / "o2" / "r.json")],
        ["eval", "--checkpoint", str(bare), "--tasks", t("good.yaml"), "--output", str(root / "o3" / "r.json")],
        ["eval", "--checkpoint", str(model), "--tasks", t("odd_type.yaml")],
        ["eval", "--checkpoint", str(model), "--tasks", t("odd_key.yaml")],
        ["eval", "--checkpoint", str(model), "--tasks", t("missing_data.yaml")],
        ["eval", "--checkpoint", str(root / "no_model"), "--tasks", t("good.yaml")],
    )
    codes = [code for code, _ in runs]
    lines = [_last_line(err) for _, err in runs]
    assert all(code != 0 for code in codes), list(zip(codes, lines))
    broken, no_task, fewshot, no_tok, odd_type, odd_key, no_data, no_model = lines
    assert "broken" in broken and "question" in broken and "doc 3" in broken  # task, field, doc index
    kept = json.loads((out / "results.json").read_text())  # the finished task is on disk
    assert set(kept["results"]) == {"good"} and "acc,none" in kept["results"]["good"]
    assert "nothing.yaml" in no_task
    assert "50" in fewshot and "few" in fewshot
    assert "tokenizer" in no_tok
    assert "ranking" in odd_type
    assert "prompt_magic" in odd_key
    assert "nope.jsonl" in no_data
    assert "no_model" in no_model


def test_generation_without_stop_strings_and_perturbed_scores(setup):
    root, model, _, tasks = setup
    out = root / "robust"
    [(code, err), (code2, err2)] = llm_session(
        ["eval", "--checkpoint", str(model), "--tasks", str(tasks / "gen.yaml"), "--output", str(root / "gen" / "results.json")],
        ["eval", "--checkpoint", str(model), "--tasks", str(tasks / "good.yaml"), "--perturb", "case", "--output", str(out / "results.json")],
    )
    assert code == 0, err[-2000:]
    assert "end-of-sequence" in err or "EOS" in err  # says that it stops at the tokenizer's EOS
    assert code2 == 0, err2[-2000:]
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["results"]) == {"good", "good@case"}
    drop = doc["robustness"]["good@case"]["metrics"]["acc,none"]
    assert drop["clean"] == doc["results"]["good"]["acc,none"] and drop["perturbed"] == doc["results"]["good@case"]["acc,none"]
    clean = [json.loads(x) for x in (out / "samples_good.jsonl").read_text().splitlines()]
    noisy = [json.loads(x) for x in (out / "samples_good@case.jsonl").read_text().splitlines()]
    assert all(a["arguments"][0][0] != b["arguments"][0][0] for a, b in zip(clean, noisy))  # every input perturbed
    assert [a["arguments"][0][1] for a in clean] == [b["arguments"][0][1] for b in noisy]  # the choices are not
    assert "case" in (out / "report.md").read_text()
