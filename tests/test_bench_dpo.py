"""`llm bench dpo --vs-trl` on tiny for 2 steps: both sides run the same pairs per step, count
the same real tokens, start from the same model (log 2 at step 1) and report every figure."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

from llm.bench.dpo import run_dpo_bench  # noqa: E402
from llm.config.loading import load_config  # noqa: E402
from preference_models import PAIRS  # noqa: E402


@pytest.mark.slow
def test_bench_dpo_vs_trl_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")  # our side's process: one CPU device, as a user runs it (not conftest's 8)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    # One pair per row, 4 rows: every step holds 4 whole pairs, so TRL's batch is 4 and its steps
    # take exactly our steps' pairs.
    config = load_config("configs/dpo_lora_tiny.py", ["data.seq_len=256", "data.batch_size=4", "dpo.max_pairs_per_row=1"])
    out = run_dpo_bench(config, steps=2, vs_trl=True, out=tmp_path / "bench", data=str(data))
    ours, trl = out["ours"], out["trl"]
    assert [len(ids) for ids in ours["step_pairs"]] == [4, 4] and trl["pairs_per_step"] == 4
    assert sorted(i for ids in ours["step_pairs"] for i in ids) == list(range(8))
    assert trl["tokens_per_step"] == ours["tokens_per_step"]  # the same pairs counted the same way
    for side in [ours, trl] + ([out["trl_bf16"]] if "trl_bf16" in out else []):
        assert side["tokens_per_s"] > 0 and side["peak_rss_bytes"] > 0 and side["step_time"] > 0
        assert side["first_step_loss"] == pytest.approx(math.log(2), rel=1e-5)
    assert out["speedup_vs_trl"] > 0 and out["first_step_loss_diff"] <= 1e-5
    header = out["table"].splitlines()[0]
    for column in ("side", "dtype", "pairs/step", "real tokens/s", "step time", "peak RSS", "first-step loss"):
        assert column in header
    assert (tmp_path / "bench" / "bench.md").read_text().strip() == out["table"]
    assert out["config"]["lora_rank"] == 8 and out["machine"]["cores"] >= 1
