"""`llm bench data` measures the real pipeline (synthetic configs are swapped for the built-in
text) and counts real tokens: positions holding a document's token, never padding, whether or
not they carry loss. Short timings keep the tests fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm.bench.data import measure, run_data_bench
from llm.config.loading import load_config
from llm.data.pipeline import _encoder, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_run_data_bench_measures_the_builtin_text(capsys):
    config = load_config(ROOT / "configs/small.py", ["model.vocab_size=512"])
    assert config.data.source == "synthetic"
    result = run_data_bench(config, min_seconds=0.3)
    assert result["source"] == "text" and result["path"] == "builtin"
    assert result["tokens_per_s"] > 1000 and result["tokens"] <= result["slots"]
    assert result["sentencepiece"]["vocab_size"] == 512 and result["tokens_per_s_sentencepiece"] > 1000
    assert 0 <= result["padding_fraction"] < 0.2
    json.dumps(result)  # the CLI writes it as --json
    assert "tokens/s" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["pretrain", "sft"])
def test_measure_counts_exactly_the_real_tokens(tmp_path, fmt):
    """Every example fills more than half a row, so each row holds one example and padding:
    counting padding (or only loss-bearing tokens, for SFT) changes the figure."""
    records = [{"text": f"document {i:02d} " + "x" * 30} if fmt == "pretrain" else {"prompt": f"q{i:02d}", "response": f"a{i:02d}"}
               for i in range(40)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = load_config(ROOT / "configs/tiny.py", ["data.source=jsonl", f"data.path={path}", f"data.format={fmt}",
                                                    "data.seq_len=64", "data.batch_size=2", "data.eval_fraction=0.0"])
    encoded = _encoder(config, build_tokenizer(config))(records[0], "first record")
    per_row = len(encoded.tokens) - 1  # inputs/targets pairs of one example (equal for every record)
    assert 32 < per_row < 64
    if fmt == "sft":
        assert encoded.weights.sum() < per_row  # loss on the response only: counting loss tokens differs
    r = measure(config, min_seconds=60, max_batches=3)
    assert r["batches"] == 3 and r["slots"] == 3 * 2 * 64
    assert r["tokens"] == 3 * 2 * per_row
    assert r["padding_fraction"] == pytest.approx(1 - per_row / 64)
