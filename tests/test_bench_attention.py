"""`llm bench attention`: blocked and xla agree with each other and with f32 within the stated
tolerances and keep packed documents apart; an attention that ignores the segments is caught;
cuDNN off a GPU is a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm.bench.attention import TOLERANCE, check_attention, format_table, packed_segment_ids
from llm.cli.main import main
from llm.model.attention import attend

TINY = dict(batch=2, seq=64, heads=4, kv_heads=2, head_dim=16, block=16)


def test_packed_rows_hold_several_documents_then_padding():
    ids = packed_segment_ids(4, 64, np.random.default_rng(0))
    for row in ids:
        docs = row[row > 0]
        assert docs.max() >= 2 and np.all(np.diff(docs) >= 0)  # 1..k in order
        assert set(np.unique(docs)) == set(range(1, docs.max() + 1))
        assert np.all(row[len(docs):] == 0)  # padding only at the end


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_blocked_matches_xla_and_f32(dtype):
    r = check_attention("blocked", "xla", dtype=dtype, timing=False, **TINY)
    assert r["ok"], r["failures"]
    for name, e in r["errors"].items():
        assert e["impl_f32"]["rel"] <= TOLERANCE[dtype] and e["vs_f32"]["rel"] <= TOLERANCE[dtype], name
    for leak in r["leak"].values():
        assert leak["doc_positions"] > 0 and leak["out"]["inside_change"] > 0
        assert all(leak[n]["change"] == 0.0 for n in ("out", "dq", "dk", "dv"))


def test_attention_across_documents_is_caught():
    def causal_only(q, k, v, mask):  # the bug: segments ignored, causality kept
        return attend(q, k, v, None, "xla")

    r = check_attention(causal_only, "xla", dtype="float32", timing=False, **TINY)
    assert not r["ok"]
    leak = r["leak"]["causal_only"]
    assert leak["out"]["change"] > 0.1 and leak["dq"]["change"] > 0
    assert r["leak"]["xla"]["out"]["change"] == 0.0
    assert any("causal_only leaks across packed documents" in f for f in r["failures"])
    assert "verdict: FAIL" in format_table(r)


def test_cli_runs_the_check_and_writes_json(tmp_path, capsys):
    out = tmp_path / "attention.json"
    assert main(["bench", "attention", "--impl", "blocked", "--vs", "xla", "--dtype", "float32", "--batch", "2",
                 "--seq", "64", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--block", "16",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["ok"] and (r["impl"], r["vs"], r["seq"]) == ("blocked", "xla", 64)
    assert set(r["timing"]) == {"blocked", "xla"} and all(t["best_ms"] > 0 for t in r["timing"].values())
    assert "verdict: ok" in capsys.readouterr().out


def test_cudnn_on_cpu_is_a_one_line_error(capsys):
    assert main(["bench", "attention", "--impl", "cudnn", "--seq", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--impl cudnn needs a GPU with cuDNN; this machine's JAX backend is cpu" in err


def test_cli_exits_nonzero_on_a_leak_and_still_writes_json(tmp_path, monkeypatch, capsys):
    import llm.bench.attention as bench

    real = bench.implementation

    def leaky_blocked(name, block):
        if name != "blocked":
            return real(name, block)
        return lambda q, k, v, mask: attend(q, k, v, None, "blocked", block=block)  # segments ignored

    monkeypatch.setattr(bench, "implementation", leaky_blocked)
    out = tmp_path / "attention.json"
    assert main(["bench", "attention", "--impl", "blocked", "--vs", "xla", "--seq", "64", "--heads", "4",
                 "--head-dim", "16", "--block", "16", "--json", str(out)]) == 2
    captured = capsys.readouterr()
    assert "verdict: FAIL" in captured.out
    assert len(captured.err.strip().splitlines()) == 1 and "attention check failed" in captured.err
    r = json.loads(out.read_text())
    assert not r["ok"] and r["leak"]["blocked"]["out"]["change"] > 0 and r["leak"]["xla"]["out"]["change"] == 0.0
