"""`llm data curate` end to end: per-stage counts match what was planted, outputs are
readable shards split by content hash, bad input is counted or fatal, the report has MB/s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm.cli.main import main
from llm.config.loading import load_config
from llm.data.curate.run import curate
from llm.data.pipeline import make_batches
from llm.data.sources import open_source
from llm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def prose(rng, vocab, n=120) -> str:
    words = list(rng.choice(vocab, n))
    lines, line = [], []
    for w in words:
        line.append(w)
        if len(line) >= 12:
            lines.append(" ".join(line).capitalize() + ".")
            line = []
    return "\n".join(lines + [" ".join(line) + "."])


@pytest.fixture()
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    vocab = [w for w in ("alpha beta gamma delta river stone cloud paper window garden music letter orange "
                         "silver market forest bridge candle engine harbor island jacket ladder meadow nickel "
                         "ocean pepper quartz rocket saddle tunnel umbrella violin walnut yellow zephyr").split()]
    vocab += [f"{a}{b}" for a in vocab[:20] for b in ("s", "ed", "ing", "er")]
    docs = [prose(rng, vocab) for _ in range(60)]
    lines = [json.dumps({"text": d}) for d in docs]
    lines += [json.dumps({"text": docs[i]}) for i in range(5)]  # 5 exact duplicates
    lines += [json.dumps({"text": docs[5 + i].replace(".", ";", 1)}) for i in range(4)]  # 4 near duplicates
    lines += [json.dumps({"text": "Too short."}) for _ in range(1)]  # quality (also a duplicate-free rule hit)
    lines += [json.dumps({"text": prose(rng, vocab) + f"\nWrite to jane{i}@example.com or call (555) 010-{1000 + i}."}) for i in range(3)]
    eval_passage = " ".join(rng.choice(vocab, 30))
    lines += [json.dumps({"text": prose(rng, vocab) + "\n" + eval_passage + "\n" + prose(rng, vocab, 30)})]  # contaminated
    lines += ["{broken json", json.dumps({"body": "no text field"}), json.dumps({"text": "   "})]
    order = rng.permutation(len(lines) - 3)
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join([lines[i] for i in order] + lines[-3:]) + "\n")
    (tmp_path / "eval.txt").write_text(eval_passage)
    return path, tmp_path / "eval.txt"


def test_curate_counts_every_stage(corpus, tmp_path):
    path, eval_file = corpus
    config = load_config(ROOT / "configs/tiny.py", ["data.source=jsonl", f"data.path={path}", f"data.curate.decontaminate={eval_file}",
                                                    "data.curate.eval_fraction=0.2", "data.curate.shard_docs=10"])
    report = curate(config, tmp_path / "out")
    removed = {s["stage"]: s["docs_removed"] for s in report["stages"]}
    assert removed == {"bad_input": 3, "normalize": 0, "quality": 1, "exact_dedup": 5, "near_dedup": 4, "decontaminate": 1, "pii": 0}
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["bad_input"]["reasons"]["empty document"] == 1
    assert any(e["where"].endswith("raw.jsonl:75") for e in stages["bad_input"]["examples"])
    assert stages["exact_dedup"]["tokens_removed"] > 0 and stages["exact_dedup"]["examples"][0]["duplicate_of"] >= 0
    assert report["pii_replacements"]["email"] == 3 and report["pii_replacements"]["phone"] == 3
    out = report["output"]
    assert out["train"]["docs"] + out["validation"]["docs"] == 63 and out["validation"]["docs"] > 0
    assert len(out["train"]["files"]) >= 2  # sharded
    assert report["input"]["docs"] == 77 and report["mb_per_s"] > 0
    train = open_source("arrayrecord", str(tmp_path / "out" / "train-*.array_record"))
    texts = [train[i]["text"] for i in range(len(train))]
    assert not any("@example.com" in t for t in texts) and any("<EMAIL>" in t for t in texts)
    val = open_source("arrayrecord", str(tmp_path / "out" / "validation-*.array_record"))
    assert not {val[i]["text"] for i in range(len(val))} & set(texts)
    # The output manifest feeds the training pipeline directly.
    config = load_config(ROOT / "configs/tiny.py", [f"data.path={tmp_path / 'out' / 'manifest.json'}"])
    assert next(make_batches(config, "validation"))["inputs"].shape == (8, 128)


def test_cli_and_failure_modes(corpus, tmp_path, capsys):
    path, _ = corpus
    rc = main(["data", "curate", "--config", str(ROOT / "configs/tiny.py"), "--config.data.source=jsonl", f"--config.data.path={path}",
               "--config.data.curate.output_format=jsonl", "--out", str(tmp_path / "o")])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["docs_in"] == 77 and summary["removed"]["exact_dedup"] == 5
    assert (tmp_path / "o" / "train-00000.jsonl").is_file() and (tmp_path / "o" / "report.json").is_file()
    rc = main(["data", "curate", "--config", str(ROOT / "configs/tiny.py"), "--config.data.source=jsonl", f"--config.data.path={path}",
               "--config.data.bad_input=fail", "--out", str(tmp_path / "f")])
    assert rc == 2 and "bad input at" in capsys.readouterr().err
    config = load_config(ROOT / "configs/tiny.py", ["data.source=jsonl", f"data.path={path}", "data.curate.min_chars=100000000"])
    with pytest.raises(UserError, match="all 77 documents were removed"):
        curate(config, tmp_path / "x")


def test_a_non_utf8_file_names_the_cause_and_writes_the_report(tmp_path):
    """Every document dropped as bad input: the error names the file and the encoding (not the
    quality thresholds), and the report it points to exists."""
    bad = tmp_path / "notes.txt"
    bad.write_bytes("Plenty of ordinary words in this file, enough for the quality filters. ".encode() * 3 + b"\xff\xfe latin-1 \xe9\n")
    out = tmp_path / "curated"
    proc = subprocess.run([sys.executable, "-m", "llm.cli.main", "data", "curate", "--config", str(ROOT / "configs/tiny.py"),
                           f"--config.data.path={bad}", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert "non-UTF-8 bytes" in error and str(bad) in error and "UTF-8" in error.split(";")[-1], error
    assert "thresholds" not in error
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][0] == {**report["stages"][0], "stage": "bad_input", "docs_removed": 1}
    assert not (out / "manifest.json").exists()
