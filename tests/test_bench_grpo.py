"""`llm bench grpo`: the report's figures and targets on fixed numbers, and the TRL GRPO peer on a
tiny model for a few steps (each step's breakdown adds up and counts what TRL really ran)."""

from __future__ import annotations

import pytest

from llm.bench.grpo import compare, summarize_ours, table, verdict
from llm.bench.trl_grpo_peer import importable, summarize
from llm.errors import UserError


def stage_row(step_time, rollout_time, reference_time, reward_time, rollout_tokens, train_tokens):
    return {"step_time": step_time, "rollout_time": rollout_time, "reference_time": reference_time, "reward_time": reward_time,
            "score_time": rollout_time + reference_time + reward_time + 0.01, "rollout_tokens": rollout_tokens,
            "train_tokens": train_tokens, "train_time": step_time - (rollout_time + reference_time + reward_time + 0.01)}


def test_trl_summary_leaves_out_warmup_and_rates_are_tokens_over_time():
    rows = [stage_row(9.0, 8.0, 0.0, 0.1, 100, 200), stage_row(1.0, 0.5, 0.1, 0.05, 100, 300), stage_row(3.0, 1.5, 0.1, 0.05, 200, 500)]
    s = summarize(rows, warmup=1)
    assert s["timed_steps"] == 2 and s["step_time"] == pytest.approx(2.0) and s["steps_per_s"] == pytest.approx(0.5)
    assert s["rollout_tokens_per_s"] == pytest.approx(300 / 2.0)  # not the mean of 200 and 133
    assert s["train_time"] == pytest.approx((0.34 + 1.34) / 2)
    assert s["train_tokens_per_s"] == pytest.approx(800 / 1.68)
    assert summarize(rows, warmup=3) == {}


def test_our_summary_times_the_loop_steps_and_pairs_train_time_with_the_step_before():
    """Row k's train_time is step k-1's train step; a step trains on its rollout's prompt tokens
    (all G rows) and completions."""
    rows = [{"step": 1, "rollout_time": 30.0, "reference_time": 0.0, "reward_time": 0.1, "rollout_tokens": 64},
            {"step": 2, "step_time": 2.0, "rollout_time": 0.4, "reference_time": 0.1, "reward_time": 0.1, "rollout_tokens": 200,
             "train_time": 20.0},
            {"step": 3, "step_time": 1.0, "rollout_time": 0.6, "reference_time": 0.1, "reward_time": 0.1, "rollout_tokens": 300,
             "train_time": 0.5}]
    s = summarize_ours(rows, warmup=1, prompt_tokens=[10, 20, 30])
    assert s["timed_steps"] == 2 and s["step_time"] == pytest.approx(1.5) and s["steps_per_s"] == pytest.approx(2 / 3.0)
    assert s["rollout_tokens_per_s"] == pytest.approx(500 / 1.0) and s["reference_time"] == pytest.approx(0.1)
    assert s["train_time"] == pytest.approx(0.5)  # step 2's, from row 3 (row 2 holds step 1's compile)
    assert s["train_tokens_per_s"] == pytest.approx((20 + 200) / 0.5)
    # two optimizer steps per rollout (steps_per_generation=2): each trains on half its prompts
    s = summarize_ours(rows, warmup=1, prompt_tokens=[40, 80], steps_per_generation=2)
    assert s["train_tokens_per_s"] == pytest.approx((20 + 200) / 0.5)
    assert summarize_ours(rows, warmup=2, prompt_tokens=[10, 20, 30])["train_time"] is None  # no later row holds step 3's


def side(steps_per_s, dtype="float32", **kw):
    figures = dict(side="x", dtype=dtype, steps_per_s=steps_per_s, step_time=1 / steps_per_s, rollout_time=0.5, rollout_tokens=100,
                   rollout_tokens_per_s=200.0, reference_time=0.0, reward_time=0.01, train_time=0.4, train_tokens_per_s=1000.0,
                   peak_rss_bytes=2**30)
    return {**figures, **kw}


def test_compare_takes_trl_fastest_mode_and_checks_both_targets():
    ours = side(3.0, rollout_tokens_per_s=850.0)
    out = compare(ours, [side(1.0), side(1.6, dtype="bfloat16 autocast")], {"batch": 32, "tokens_per_s": 1000.0})
    assert out["trl_fastest"] == "bfloat16 autocast" and out["speedup_vs_trl"] == pytest.approx(3.0 / 1.6)
    assert out["speedup_met"] is False and out["rollout_tokens_per_s_vs_trl"] == pytest.approx(850 / 200)
    assert out["rollout_vs_generate"] == pytest.approx(0.85) and out["rollout_vs_generate_met"] is True
    out = compare(ours, [side(1.5)], {"batch": 32, "tokens_per_s": 1100.0})
    assert out["speedup_met"] is True and out["rollout_vs_generate_met"] is False  # 0.77 < 0.8
    lines = verdict({**out, "generate": {"batch": 32, "tokens_per_s": 1100.0, "e2e_tokens_per_s": 900.0}})
    assert "2.00x (target >= 2x: met)" in lines[0] and "batch 32" in lines[1] and "not met" in lines[1]
    assert compare(ours, [], None) == {}


def test_table_has_one_line_per_side_and_the_breakdown_columns():
    text = table([side(3.0, side="llm"), side(1.0, side="trl 1.16.0", reference_time=None, train_tokens_per_s=None)])
    head, _, ours, trl = text.splitlines()
    for column in ("steps/s", "step time", "rollout tokens/s", "reference pass", "rewards", "train step", "train tokens/s", "peak RSS"):
        assert column in head
    assert ours.startswith("| llm | float32 | 3.000 | 333 ms |") and "| - |" in trl


def test_rewards_go_to_the_peer_by_an_importable_name():
    from llm.rl.tasks.addition import addition_reward

    assert importable(addition_reward) == "llm.rl.tasks.addition:addition_reward"
    with pytest.raises(UserError, match="not a top-level function"):
        importable(lambda prompts, completions, **kw: [0.0] * len(prompts))


def test_llm_bench_grpo_options_reach_the_target(monkeypatch, tmp_path):
    import llm.bench.grpo as bench
    from llm.cli.main import main

    seen = []
    monkeypatch.setattr(bench, "run", lambda args: seen.append(args) or {"ok": 1})
    assert main(["bench", "grpo", "--config", "configs/grpo_tiny.py", "--model", "configs/small.py", "--vs-trl", "--steps", "5",
                 "--warmup", "2", "--json", str(tmp_path / "b.json"), "--config.rl.num_generations=4"]) == 0
    (args,) = seen
    assert (args.model, args.vs_trl, args.steps, args.warmup, args.out) == ("configs/small.py", True, 5, 2, "runs/bench_grpo")
    assert args.config_overrides == ["rl.num_generations=4"] and (tmp_path / "b.json").read_text().strip() == '{\n  "ok": 1\n}'


def test_bench_refuses_what_it_cannot_time_or_give_trl():
    from llm.bench.grpo import reward_names, run_grpo_bench
    from llm.config.loading import load_config

    config = load_config("configs/grpo_tiny.py", [])
    with pytest.raises(UserError, match="--warmup 0"):
        run_grpo_bench(config, steps=3, vs_trl=True, out="unused", warmup=0)
    with pytest.raises(UserError, match="--steps 2: .* at least --warmup \\+ 2 = 3"):
        run_grpo_bench(config, steps=2, vs_trl=True, out="unused", warmup=1)
    with pytest.raises(UserError, match="rl.reward_model"):
        reward_names(load_config("configs/grpo_tiny.py", ["rl.reward_model=runs/rm"]), None)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from llm.bench.dpo import bench_config, build_hf_model, train_tokenizer
    from llm.config.loading import load_config

    out = tmp_path_factory.mktemp("grpo_hf")
    config = bench_config(load_config("configs/tiny.py", []), None, 2)
    prompts = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in [(12, 34), (5, 7), (40, 2), (99, 1)]]
    tokenizer = train_tokenizer([p["prompt"] + p["answer"] for p in prompts], int(config.model.vocab_size), out)
    build_hf_model(config, out)
    return out, tokenizer, prompts


def test_trl_peer_steps_add_up_and_count_what_trl_ran(tiny_hf):
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from llm.bench.trl_grpo_peer import trl_grpo_steps

    model_dir, tokenizer, prompts = tiny_hf
    g, new = 4, 8
    out = trl_grpo_steps(model_dir, None, prompts, rewards=[["llm.rl.tasks.addition:addition_reward", 1.0]], steps=2, warmup=1,
                         num_generations=g, prompts_per_step=2, max_completion_length=new, lora_rank=4, threads=1)
    assert len(out["breakdown"]) == 2 and len(out["steps"]) == 2 and out["timed_steps"] == 1
    # prompts in order, 2 per step, each G times: step k trains on prompts 2k, 2k+1
    for k, row in enumerate(out["breakdown"]):
        prompt_tokens = g * sum(len(tokenizer(p["prompt"])["input_ids"]) for p in prompts[2 * k : 2 * k + 2])
        assert 0 < row["rollout_tokens"] <= 2 * g * new
        assert row["train_tokens"] == prompt_tokens + row["rollout_tokens"]
        assert row["rollout_time"] + row["reference_time"] + row["reward_time"] <= row["score_time"] <= row["step_time"]
        assert row["train_time"] == pytest.approx(row["step_time"] - row["score_time"]) and row["train_time"] > 0
        assert row["reference_time"] == 0.0  # beta = 0 and one pass per batch: TRL computes no old / reference log-probs
    assert out["steps"][0]["completions/mean_length"] * 2 * g == pytest.approx(out["breakdown"][0]["rollout_tokens"])
    assert 0.0 <= out["steps"][0]["rewards/addition_reward/mean"] <= 1.0  # our reward, with the answer column, reached TRL
    assert out["steps_per_s"] == pytest.approx(1 / out["breakdown"][1]["step_time"])
    assert out["dtype"] == "float32" and out["lora_rank"] == 4 and out["peak_rss_bytes"] > 0


def test_trl_peer_reference_pass_is_timed_when_beta_is_set(tiny_hf):
    pytest.importorskip("trl")
    from llm.bench.trl_grpo_peer import trl_grpo_steps

    model_dir, _, prompts = tiny_hf
    out = trl_grpo_steps(model_dir, None, prompts, rewards=[["llm.rl.tasks.addition:addition_reward", 1.0]], steps=2, warmup=1,
                         num_generations=2, prompts_per_step=2, max_completion_length=4, beta=0.04, lora_rank=4, threads=1)
    assert all(row["reference_time"] > 0 for row in out["breakdown"]) and "kl" in out["steps"][0]


def test_trl_peer_splits_a_rollout_over_steps_per_generation(tiny_hf):
    """One rollout feeds two optimizer steps: generated once (step 1), each step trains on its half."""
    pytest.importorskip("trl")
    from llm.bench.trl_grpo_peer import trl_grpo_steps

    model_dir, tokenizer, prompts = tiny_hf
    out = trl_grpo_steps(model_dir, None, prompts, rewards=[["llm.rl.tasks.addition:addition_reward", 1.0]], steps=2, warmup=1,
                         num_generations=2, prompts_per_step=2, steps_per_generation=2, max_completion_length=4, lora_rank=4, threads=1)
    first, second = out["breakdown"]
    assert first["rollout_tokens"] > 0 and second["rollout_tokens"] == 0 == second["rollout_time"]
    prompt_tokens = 2 * sum(len(tokenizer(p["prompt"])["input_ids"]) for p in prompts[:2])
    assert first["train_tokens"] + second["train_tokens"] == prompt_tokens + first["rollout_tokens"]
    assert 0 < first["train_tokens"] and 0 < second["train_tokens"]


@pytest.mark.slow
def test_bench_grpo_vs_trl_tiny(tmp_path, monkeypatch):
    """Both sides run: the same prompts in the same order (TRL's prompt tokens per step are ours),
    the same group size and budget, every figure reported, bench.md / bench.json written."""
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    from llm.bench.grpo import run_grpo_bench
    from llm.config.loading import load_config

    monkeypatch.setenv("XLA_FLAGS", "")  # our side's process: one CPU device, as a user runs it
    config = load_config("configs/grpo_tiny.py", ["rl.prompts_per_step=2", "rl.num_generations=4", "rl.max_new_tokens=8"])
    out = run_grpo_bench(config, steps=3, vs_trl=True, out=tmp_path / "bench", warmup=1)
    ours, trl = out["ours"], out["trl"]
    assert [r["step"] for r in ours["steps"]] == [1, 2, 3] and len(trl["breakdown"]) == 3
    assert [row["train_tokens"] - row["rollout_tokens"] for row in trl["breakdown"]] == ours["prompt_tokens"]
    for side in [ours, trl] + ([out["trl_bf16"]] if "trl_bf16" in out else []):
        assert side["timed_steps"] == 2 and side["steps_per_s"] > 0 and side["rollout_tokens_per_s"] > 0
        assert 0 < side["rollout_tokens"] <= 8 * 8 and side["train_tokens_per_s"] > 0 and side["peak_rss_bytes"] > 0
    assert out["speedup_vs_trl"] > 0 and out["generate"]["batch"] == 8 and out["rollout_vs_generate"] > 0
    assert out["config"]["rewards"] == [["llm.rl.tasks.addition:addition_reward", 1.0]]
    assert (tmp_path / "bench" / "bench.md").read_text().startswith(out["table"])
    assert (tmp_path / "bench" / "bench.json").is_file()
