"""`llm bench eval`: the score check on fixed numbers, and one short run of both sides (ours and
lm-eval's hf backend) on a tiny model: the same scores, and every figure the table shows."""

from __future__ import annotations

import pytest

from llm.bench.eval import _agree, run_eval_bench, table


def test_agree_is_exact_for_counts_and_relative_for_perplexities():
    theirs = {"metrics": {"acc,none": 0.5, "acc_stderr,none": 0.1, "word_perplexity,none": 100.0, "alias": "x"}, "values": [-1.0, -2.0]}
    same = {"metrics": {"acc,none": 0.5, "word_perplexity,none": 100.0005}, "values": [-1.00002, -2.0]}
    assert _agree(same, theirs) == {"identical_scores": True, "max_item_logprob_diff": pytest.approx(2e-5)}
    assert not _agree({**same, "metrics": {**same["metrics"], "acc,none": 0.5000001}}, theirs)["identical_scores"]
    assert not _agree({**same, "metrics": {**same["metrics"], "word_perplexity,none": 100.01}}, theirs)["identical_scores"]
    assert not _agree({"metrics": {"acc,none": 0.5}, "values": []}, theirs)["identical_scores"]  # a metric missing


@pytest.mark.slow
def test_short_run_gives_lm_evals_scores(tmp_path):
    from llm.config.loading import load_config

    config = load_config("configs/tiny.py", [])
    result = run_eval_bench(config, vs_lm_eval=True, out=tmp_path, limit=3, tasks=["builtin_next_line", "builtin_perplexity"],
                            batch_sizes=[2], batch_size=4)
    assert [r["task"] for r in result["rows"]] == ["builtin_next_line", "builtin_perplexity"]
    for row in result["rows"]:
        assert row["items"] == 3 and row["identical_scores"], row
        assert row["first_items_per_s"] > 0 and row["warm_items_per_s"] > 0 and row["peer_items_per_s"] > 0
    assert "| builtin_next_line | 3 |" in table(result["rows"])
    assert (tmp_path / "bench.md").is_file() and (tmp_path / "bench.json").is_file()
