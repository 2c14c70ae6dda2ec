"""The built-in corpus: manifest, kinds and splits held out by module, SFT pairs that rebuild
real functions, preference corruptions, classification labels, determinism, pipeline use."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from llm.cli.main import main
from llm.config.loading import load_config
from llm.data.builtin import KINDS, SPLITS, build_builtin, manifest_file
from llm.data.pipeline import make_batches
from llm.data.sources import stdlib_files
from llm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("builtin")
    assert main(["data", "builtin", "--out", str(out)]) == 0
    return out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_manifest_lists_every_kind_and_split(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    for kind in KINDS:
        for split in SPLITS:
            path = Path(manifest_file(corpus / "manifest.json", kind, split))
            assert path.is_file() and manifest["counts"][kind][split] == len(read(path)) > 0
    assert manifest["counts"]["pretrain"]["train"] > 300 and manifest["counts"]["sft"]["train"] > 1000
    with pytest.raises(UserError, match="no sft/test file"):
        manifest_file(corpus / "manifest.json", "sft", "test")


def test_splits_are_held_out_by_module(corpus):
    for kind in ("pretrain", "sft"):
        train = {r["module"] for r in read(corpus / kind / "train.jsonl")}
        val = {r["module"] for r in read(corpus / kind / "validation.jsonl")}
        assert train and val and not train & val
    modules = {r["module"] for r in read(corpus / "pretrain" / "train.jsonl")}
    assert not any(".test." in m or m.startswith("test.") for m in modules)


def test_sft_pairs_rebuild_real_functions(corpus):
    records = read(corpus / "sft" / "validation.jsonl")
    for r in records[:200]:
        user, assistant = r["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        header = user["content"].split("\n\n", 1)[1]
        assert header.lstrip().startswith(("def ", "async def ", "@"))
        tree = ast.parse(header + assistant["content"])  # signature + docstring + body is valid Python
        fn = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
        assert ast.get_docstring(fn) is not None and len(fn.body) >= 2
        assert fn.name == r["function"].split(".")[-1]


def test_preference_pairs_pair_the_real_body_with_a_corruption(corpus):
    sft = [r["messages"][1]["content"] for r in read(corpus / "sft" / "train.jsonl")]
    prefs = read(corpus / "preference" / "train.jsonl")
    kinds = {}
    for p in prefs:
        assert p["chosen"] != p["rejected"]
        kinds[p["corruption"]] = kinds.get(p["corruption"], 0) + 1
    assert set(kinds) >= {"other_body", "shuffled", "truncated"}
    assert [p["chosen"] for p in prefs] == sft  # same functions, same order
    truncated = next(p for p in prefs if p["corruption"] == "truncated")
    assert truncated["chosen"].startswith(truncated["rejected"])
    shuffled = next(p for p in prefs if p["corruption"] == "shuffled")
    assert sorted(shuffled["chosen"].splitlines()) == sorted(shuffled["rejected"].splitlines())


def test_classification_labels(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    labels = manifest["labels"]
    rows = read(corpus / "classification" / "train.jsonl") + read(corpus / "classification" / "validation.jsonl")
    assert len(labels) == 8 and all(not name.startswith("_") for name in labels)
    for r in rows:
        assert labels[r["label"]] == r["label_name"] == r["function"].split(".")[0]
    counts = np.bincount([r["label"] for r in rows], minlength=8)
    assert counts.min() > 20


def test_deterministic(tmp_path):
    files = stdlib_files()[::8]
    build_builtin(tmp_path / "a", files=files)
    build_builtin(tmp_path / "b", files=list(reversed(files))[::-1])
    for kind in KINDS:
        for split in SPLITS:
            a = (tmp_path / "a" / kind / f"{split}.jsonl").read_bytes()
            b = (tmp_path / "b" / kind / f"{split}.jsonl").read_bytes()
            assert a and hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), (kind, split)


def test_pipeline_reads_the_manifest(corpus):
    config = load_config(ROOT / "configs/tiny.py", [f"data.path={corpus}/manifest.json", "data.format=sft", "data.seq_len=256", "model.max_seq_len=256"])
    b = next(make_batches(config, "validation"))
    assert b["loss_mask"].sum() > 0 and b["loss_mask"].sum() < (b["segment_ids"] > 0).sum()
    config = load_config(ROOT / "configs/tiny.py", [f"data.path={corpus}", "data.format=pretrain"])
    b = next(make_batches(config))
    assert b["loss_mask"].mean() > 0.9
