"""`llm eval` against lm-evaluation-harness itself (`lm_eval.simple_evaluate(model="hf")`), on the
same task YAML files (local json data written here) and the same tiny transformers models: per
item the same log-likelihoods and is_greedy, the same generations, identical acc / acc_norm /
exact_match, and word_perplexity / bits_per_byte to 1e-5 relative; one task of each output type,
zero-shot and 2-shot, on a tiny Llama and a tiny GPT-2."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from interop_models import build_hf_model, train_tokenizer

pytestmark = pytest.mark.slow

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TASKS = ("parity_ll", "parity_rolling", "parity_mc", "parity_gen")


def _docs() -> tuple[list[dict], list[dict]]:
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta", "lambda"]
    qa = []
    for i in range(8):
        a, b = words[i % 10], words[(3 * i + 1) % 10]
        qa.append({"question": f"Which word follows {a} in the list {a}, {b}?", "answer": b,
                   "choices": [b, a, words[(i + 5) % 10], "none of them "], "label": i % 4})
    stdlib = sysconfig.get_paths()["stdlib"]
    texts = [{"text": Path(f).read_text()[:700]} for f in sorted(glob.glob(stdlib + "/json/*.py"))[:4]]
    return qa, texts


def _write_tasks(root: Path) -> Path:
    qa, texts = _docs()
    (root / "qa.jsonl").write_text("".join(json.dumps(d) + "\n" for d in qa))
    (root / "texts.jsonl").write_text("".join(json.dumps(d) + "\n" for d in texts))
    tasks = root / "tasks"
    tasks.mkdir()
    data = f"""dataset_path: json
dataset_kwargs:
  data_files:
    train: {root}/qa.jsonl
    test: {root}/qa.jsonl
training_split: train
test_split: test
"""
    (tasks / "parity_ll.yaml").write_text(f"""task: parity_ll
{data}output_type: loglikelihood
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: perplexity
  - metric: acc
""")
    (tasks / "parity_mc.yaml").write_text(f"""task: parity_mc
{data}output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    (tasks / "parity_gen.yaml").write_text(f"""task: parity_gen
{data}output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: " {{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "Q:"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""")
    (tasks / "parity_rolling.yaml").write_text(f"""task: parity_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root}/texts.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""")
    return tasks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_parity")
    tok = train_tokenizer(root / "tok")
    models = {}
    for family in ("llama", "gpt2"):
        models[family] = root / family
        build_hf_model(family, models[family], tokenizer_dir=tok)
    return root, _write_tasks(root), models


def _lm_eval(model_dir: Path, tasks: Path, shots: int) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    for k, v in OFFLINE.items():
        os.environ[k] = v
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},dtype=float32,device=cpu", tasks=list(TASKS),
        task_manager=TaskManager(include_path=str(tasks)), num_fewshot=shots, log_samples=True, batch_size=4,
    )
    return out


def _ours(model_dir: Path, tasks: Path, shots: int, out: Path) -> tuple[dict, dict[str, list[dict]]]:
    paths = ",".join(str(tasks / f"{t}.yaml") for t in TASKS)
    cmd = [sys.executable, "-m", "llm.cli.main", "eval", "--checkpoint", str(model_dir), "--tasks", paths,
           "--num-fewshot", str(shots), "--batch-size", "4", "--output", str(out / "results.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **OFFLINE}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    samples = {}
    for task in TASKS:
        (path,) = out.glob(f"samples_{task}*.jsonl")
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return results, samples


def _tolerance(theirs: float) -> float:
    """1e-4 absolute; but lm-eval's rolling total of a long document is an f32 sum, and above
    |2048| one f32 step of it is already more than 1e-4 (2.4e-4 at 3000), so there the bound is
    that one step: our total (accumulated in f64) must round to lm-eval's value or its neighbour."""
    return max(1e-4, float(np.spacing(np.float32(abs(theirs)))))


def _check_samples(task: str, theirs: list[dict], ours: list[dict]) -> None:
    theirs = sorted(theirs, key=lambda s: s["doc_id"])
    ours = sorted(ours, key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in ours] == [s["doc_id"] for s in theirs], task
    for t, o in zip(theirs, ours):
        where = f"{task} doc {t['doc_id']}"
        assert o["arguments"] == json.loads(json.dumps(t["arguments"])), where
        if task == "parity_gen":
            assert o["resps"] == [list(r) for r in t["resps"]], where
            continue
        for their_resp, our_resp in zip(t["resps"], o["resps"]):
            their_first, our_first = their_resp[0], our_resp[0]
            if task == "parity_rolling":
                assert abs(our_first - their_first) <= _tolerance(their_first), (where, our_first, their_first)
            else:
                assert abs(our_first[0] - their_first[0]) <= 1e-4, (where, our_first, their_first)
                assert bool(our_first[1]) == bool(their_first[1]), (where, "is_greedy")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("shots", [0, 2])
def test_llm_eval_equals_lm_eval(setup, family, shots, tmp_path):
    root, tasks, models = setup
    theirs = _lm_eval(models[family], tasks, shots)
    ours, samples = _ours(models[family], tasks, shots, tmp_path)
    for task in TASKS:
        _check_samples(task, theirs["samples"][task], samples[task])
        their_metrics, our_metrics = theirs["results"][task], ours["results"][task]
        for key in ("acc,none", "acc_norm,none", "exact_match,none"):
            if key in their_metrics:
                assert our_metrics[key] == their_metrics[key], (task, key)
        for key in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none", "perplexity,none"):
            if key in their_metrics:
                assert our_metrics[key] == pytest.approx(their_metrics[key], rel=1e-5), (task, key)
        assert ours["n-samples"][task] == theirs["n-samples"][task]
        assert ours["n-shot"][task] == theirs["n-shot"][task]
    assert set(ours["results"]) == set(TASKS)
