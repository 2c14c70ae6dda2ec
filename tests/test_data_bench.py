"""`run_data_bench` measures the real pipeline (synthetic configs are swapped for the built-in
text) and writes tokens_per_s; short timings keep the test fast."""

from __future__ import annotations

import json
from pathlib import Path

from llm.config.loading import load_config
from llm.data.bench import measure, run_data_bench

ROOT = Path(__file__).resolve().parents[1]


def test_run_data_bench_writes_json(tmp_path, capsys):
    config = load_config(ROOT / "configs/small.py", ["model.vocab_size=512"])
    assert config.data.source == "synthetic"
    result = run_data_bench(config, str(tmp_path / "b.json"), min_seconds=0.3)
    written = json.loads((tmp_path / "b.json").read_text())
    assert written["source"] == "text" and written["path"] == "builtin"
    assert written["tokens_per_s"] == result["tokens_per_s"] > 1000
    assert written["sentencepiece"]["vocab_size"] == 512 and written["tokens_per_s_sentencepiece"] > 1000
    assert 0 <= written["padding_fraction"] < 0.2
    assert "tokens/s" in capsys.readouterr().out


def test_measure_counts_real_tokens_only():
    config = load_config(ROOT / "configs/tiny.py")
    r = measure(config, min_seconds=0.2)
    assert r["batches"] >= 1 and r["tokens_per_s"] <= r["batches_per_s"] * 8 * 128 + 1e-6
