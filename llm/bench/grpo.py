"""`llm bench grpo`: our GRPO steps against trl.GRPOTrainer on PyTorch CPU, on the same model,
prompts, group size, new-token budget and LoRA rank, in one run; and our rollout rate against
`llm bench generate`'s decode rate at the same batch.

  llm bench grpo --config configs/grpo_tiny.py --vs-trl
  llm bench grpo --config configs/grpo_tiny.py --model configs/small.py --vs-trl

The model is the config's shape (or --model's), initialised by transformers and saved as a
Hugging Face directory with a byte-level BPE tokenizer (<s>, </s>, <pad> at ids 0-2: TRL needs
an EOS and a pad token) trained on the task's prompts and answers; both sides start from it
(ours through --init-from). The prompts are the config's task's (rl.task), as plain text (no chat
template on either side). Ours runs `llm grpo` (run_grpo) for --steps steps; TRL runs the same
prompts in the order our steps took them, rl.prompts_per_step x rl.num_generations completions of
at most rl.max_new_tokens per rollout batch, with the same rewards (rl.rewards or the task's,
imported by name), lr, beta, clipping, loss aggregation and LoRA rank, in f32 and, where the CPU
has AMX or AVX-512 BF16, in bf16 autocast too.

Every figure is over the steps after the first --warmup ones (compilation, warm-up):
steps/s, and the step broken down the same way for both sides: rollout (generation; tokens/s of
the new tokens really generated, up to and including EOS), the old / reference log-prob pass, the
rewards, and the train step (tokens/s of the real prompt + completion tokens it trained on). Each
side runs in its own process. Benchmarks are not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from llm.bench.dpo import bench_config, build_hf_model, cpu_bf16, cpu_name, run_ours, train_tokenizer
from llm.errors import UserError

TARGET_SPEEDUP = 2.0  # our steps/s over TRL's fastest mode
ROLLOUT_TOLERANCE = 0.2  # our rollout tokens/s within this share of `llm bench generate`'s decode tokens/s


# ---------------------------------------------------------------------------------------------
# Our side (in a child process)


def prompt_order(n_rows: int, seed: int, prompts_per_step: int, rollouts: int) -> list[list[int]]:
    """The task rows of each of our rollouts, in our order (llm.rl.prompts.PromptStream from
    data.seed: a pure function of it)."""
    from llm.rl.prompts import PromptStream

    stream = PromptStream(n_rows, seed)
    return [stream.take(prompts_per_step) for _ in range(rollouts)]


def summarize_ours(rows: Sequence[dict], warmup: int, prompt_tokens: Sequence[int], steps_per_generation: int = 1,
                   num_iterations: int = 1) -> dict:
    """Our metrics.jsonl rows (log_every=1) as the TRL peer's summary keys, over the steps after
    the first `warmup`. A step's time is the loop's wall time for it (rollout included); a row's
    train_time is the previous step's train step (measured when the next rollout starts), so the
    train figures come from the rows after the first timed one. A step trains on its share of
    the rollout's prompts (prompt_tokens[rollout]: the prompt tokens of all its rows) and, every
    pass, on the completions (rollout_tokens is already per optimizer step)."""
    passes = steps_per_generation * num_iterations
    trained = {int(r["step"]): prompt_tokens[(int(r["step"]) - 1) // passes] / steps_per_generation
               + num_iterations * float(r["rollout_tokens"]) for r in rows}
    timed = [r for r in rows if int(r["step"]) > warmup and r.get("step_time")]
    if not timed:
        return {}
    from llm.bench.trl_grpo_peer import stage_means

    out = {**stage_means(timed), "train_time": None, "train_tokens_per_s": None}
    train = [r for r in timed if int(r["step"]) > warmup + 1 and r.get("train_time")]
    if train:
        train_time = sum(float(r["train_time"]) for r in train)
        out["train_time"] = train_time / len(train)
        out["train_tokens_per_s"] = sum(trained[int(r["step"]) - 1] for r in train) / train_time
    return out


def our_side(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """run_grpo, then its per-step rows and this process's peak RSS."""
    import jax.numpy as jnp

    from llm.bench.trl_peer import peak_rss_bytes
    from llm.finetune.grpo import run_grpo
    from llm.model.spec import model_spec

    run_grpo(config, workdir, overwrite=True)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "rollout_time" in r]
    return {"steps": rows, "first_step_loss": rows[0].get("loss") if rows else None, "peak_rss_bytes": peak_rss_bytes(),
            "dtype": jnp.dtype(model_spec(config).compute_dtype).name}


def main(argv: Sequence[str]) -> int:
    """`python -m llm.bench.grpo SPEC.json`: the child side of run_ours."""
    from llm.checkpoint.params_io import config_from_json

    spec = json.loads(Path(argv[0]).read_text())
    out = our_side(config_from_json(spec["config"]), Path(spec["workdir"]))
    Path(spec["out"]).write_text(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------------------------
# The shared inputs


def bench_grpo_config(config: ml_collections.ConfigDict, model: ml_collections.ConfigDict | None, steps: int) -> ml_collections.ConfigDict:
    """The GRPO config as a short bench run (llm.bench.dpo.bench_config: --model's shape, every
    step logged, no eval or exports, plain-text prompts), with no sample files and a short final
    held-out pass."""
    from llm.config.loading import apply_overrides

    config = bench_config(config, model, steps)
    return apply_overrides(config, ["rl.sample_every=0", "rl.eval_prompts=8"])


def reward_names(config: ml_collections.ConfigDict, task) -> list[list]:
    """[["module:function", weight], ...]: the run's rewards as the TRL peer imports them."""
    from llm.bench.trl_grpo_peer import importable
    from llm.rl.rewards.spec import parse_rewards

    if config.rl.reward_model:
        raise UserError(f"rl.reward_model={config.rl.reward_model!r}: the GRPO bench gives TRL module:function rewards only; "
                        "unset rl.reward_model (--config.rl.reward_model=)")
    return [[importable(spec.fn), spec.weight] for spec in parse_rewards(tuple(config.rl.rewards), task)]


def trl_kwargs(config: ml_collections.ConfigDict, steps: int, warmup: int) -> dict:
    """Our config's GRPO settings under the TRL peer's names (llm.bench.trl_grpo_peer)."""
    r, o, p = config.rl, config.optim, config.peft
    if r.advantage != "grpo":
        raise UserError(f"rl.advantage={r.advantage!r}: the TRL peer is GRPOTrainer; bench rl.advantage=grpo")
    return dict(steps=steps, warmup=warmup, num_generations=r.num_generations, prompts_per_step=r.prompts_per_step,
                steps_per_generation=r.steps_per_generation, num_iterations=r.num_iterations, max_completion_length=r.max_new_tokens,
                temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, lr=o.lr, beta=r.beta, epsilon_low=r.epsilon_low,
                epsilon_high=r.epsilon_high, delta=r.delta, loss_type=r.loss_agg, scale_rewards=r.scale_rewards,
                importance_sampling=r.importance_sampling, lora_rank=p.lora_rank, lora_alpha=p.lora_alpha,
                lora_targets=p.lora_targets, adam_b1=o.b1, adam_b2=o.b2, adam_eps=o.eps)


# ---------------------------------------------------------------------------------------------
# Report


def compare(ours: dict, peers: Sequence[dict], generate: dict | None) -> dict:
    """The ratios the issue sets targets for: our steps/s over TRL's fastest mode's (>= 2x), and
    our rollout tokens/s over `llm bench generate`'s decode tokens/s at the same batch (within 20%)."""
    out: dict[str, Any] = {}
    if peers:
        best = max(peers, key=lambda r: r.get("steps_per_s") or 0.0)
        out["trl_fastest"] = best["dtype"]
        out["speedup_vs_trl"] = ours["steps_per_s"] / best["steps_per_s"]
        out["speedup_target"] = TARGET_SPEEDUP
        out["speedup_met"] = out["speedup_vs_trl"] >= TARGET_SPEEDUP
        for key in ("rollout_tokens_per_s", "train_tokens_per_s"):
            if ours.get(key) and best.get(key):
                out[f"{key}_vs_trl"] = ours[key] / best[key]
    if generate and ours.get("rollout_tokens_per_s"):
        out["rollout_vs_generate"] = ours["rollout_tokens_per_s"] / generate["tokens_per_s"]
        out["rollout_vs_generate_met"] = out["rollout_vs_generate"] >= 1.0 - ROLLOUT_TOLERANCE
    return out


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.0f} ms"


def _rate(value: float | None) -> str:
    return "-" if not value else f"{value:.0f}"


def table(rows: Sequence[dict]) -> str:
    """One line per side: steps/s and the step's breakdown."""
    head = ("| side | dtype | steps/s | step time | rollout | rollout tokens/s | reference pass | rewards | train step "
            "| train tokens/s | peak RSS |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['side']} | {r['dtype']} | {r['steps_per_s']:.3f} | {_ms(r['step_time'])} | {_ms(r['rollout_time'])} | "
                     f"{_rate(r['rollout_tokens_per_s'])} | {_ms(r['reference_time'])} | {_ms(r['reward_time'])} | "
                     f"{_ms(r['train_time'])} | {_rate(r['train_tokens_per_s'])} | {r['peak_rss_bytes'] / 2**20:.0f} MiB |")
    return "\n".join(lines)


def verdict(result: dict) -> list[str]:
    """The lines that say where the targets stand."""
    lines = []
    if "speedup_vs_trl" in result:
        met = "met" if result["speedup_met"] else "not met"
        lines.append(f"steps/s vs TRL's fastest mode ({result['trl_fastest']}): {result['speedup_vs_trl']:.2f}x "
                     f"(target >= {TARGET_SPEEDUP:.0f}x: {met})")
    if "rollout_vs_generate" in result:
        met = "met" if result["rollout_vs_generate_met"] else "not met"
        g = result["generate"]
        lines.append(f"rollout tokens/s vs llm bench generate at batch {g['batch']} ({g['tokens_per_s']:.0f} decode tokens/s, "
                     f"{g['e2e_tokens_per_s']:.0f} with the prefill): {result['rollout_vs_generate']:.2f}x "
                     f"(target within {ROLLOUT_TOLERANCE:.0%}: {met})")
    return lines


# ---------------------------------------------------------------------------------------------
# The bench


def generate_rate(config: ml_collections.ConfigDict, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """`llm bench generate`'s decode tokens/s (greedy, no stop, prefill excluded) on the config's
    shape at our rollout batch, its own printout kept off the console."""
    from llm.bench.generate import run_generate_bench

    with contextlib.redirect_stdout(io.StringIO()):
        figures = run_generate_bench(config, vs_hf=False, prompt_len=prompt_len, new_tokens=new_tokens, batches=(batch,))
    return {"batch": batch, "prompt_len": prompt_len, "new_tokens": figures["new_tokens"],
            "tokens_per_s": figures["tokens_per_s"], "e2e_tokens_per_s": figures[f"e2e_tokens_per_s_b{batch}"]}


def run_grpo_bench(config: ml_collections.ConfigDict, *, steps: int, vs_trl: bool, out: str | Path, warmup: int = 1,
                   model: ml_collections.ConfigDict | None = None, generate: bool = True) -> dict:
    """Measure our GRPO run (and TRL's, and `llm bench generate` at the rollout batch on the same
    shape); print and return the figures."""
    if warmup < 1:
        raise UserError(f"--warmup {warmup}: leave out at least the first step (it compiles on our side, warms up on TRL's)")
    if steps < warmup + 2:
        raise UserError(f"--steps {steps}: the GRPO bench needs at least --warmup + 2 = {warmup + 2} (the warm-up steps are not "
                        "timed, and our train step's time is measured when the next step starts)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = bench_grpo_config(config, model, steps)
    from llm.rl.tasks import build_task

    task = build_task(config)
    rewards = reward_names(config, task)  # before the runs: a reward the peer cannot import stops here
    hf_dir = out / "hf"
    texts = [row.prompt + " " + " ".join(str(v) for v in row.columns.values()) for row in task.train]
    tokenizer = train_tokenizer(texts, int(config.model.vocab_size), hf_dir)
    build_hf_model(config, hf_dir)

    from llm.finetune.start import apply_init_from

    config = apply_init_from(config, str(hf_dir))
    rl = config.rl
    per_rollout = int(rl.steps_per_generation) * int(rl.num_iterations)
    order = prompt_order(len(task.train), int(config.data.seed), int(rl.prompts_per_step), -(-steps // per_rollout))
    lengths = [len(tokenizer(row.prompt)["input_ids"]) for row in task.train]
    prompt_tokens = [int(rl.num_generations) * sum(lengths[i] for i in idx) for idx in order]
    ours = run_ours(config, out / "llm", module="llm.bench.grpo")
    figures = summarize_ours(ours["steps"], warmup, prompt_tokens, int(rl.steps_per_generation), int(rl.num_iterations))
    if not figures:
        raise UserError(f"our run logged no step time after step {warmup} ({out / 'llm' / 'metrics.jsonl'}); raise --steps")
    ours.update(side="llm", prompt_tokens=prompt_tokens, **figures)
    batch = int(rl.prompts_per_step) * int(rl.num_generations)
    result: dict[str, Any] = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "bf16_flags": cpu_bf16()},
        "config": {"d_model": config.model.d_model, "n_layers": config.model.n_layers, "vocab_size": config.model.vocab_size,
                   "task": config.rl.task, "prompts_per_step": config.rl.prompts_per_step,
                   "num_generations": config.rl.num_generations, "rollout_batch": batch,
                   "max_new_tokens": config.rl.max_new_tokens, "lora_rank": config.peft.lora_rank, "loss_agg": config.rl.loss_agg,
                   "beta": config.rl.beta, "steps": steps, "warmup_steps": warmup, "rewards": rewards},
        "ours": ours,
    }
    rows, peers = [ours], []
    if vs_trl:
        from llm.bench.trl_peer import run_in_subprocess

        prompts = [{"prompt": task.train[i].prompt, **task.train[i].columns} for idx in order for i in idx]  # our order
        for bf16 in ([False, True] if cpu_bf16() else [False]):
            peer = run_in_subprocess("grpo", hf_dir, None, prompts, rewards=rewards, bf16=bf16, **trl_kwargs(config, steps, warmup))
            peer.update(side=f"trl {peer['versions']['trl']}")
            peers.append(peer)
            result["trl_bf16" if bf16 else "trl"] = peer
        rows += peers
    if generate:
        used = [lengths[i] for idx in order for i in idx]
        prompt_len = max(1, round(sum(used) / len(used)))
        result["generate"] = generate_rate(config, batch, prompt_len, int(config.rl.max_new_tokens))
    result.update(compare(ours, peers, result.get("generate")))
    text = table(rows)
    machine = result["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, bf16 flags: {', '.join(machine['bf16_flags']) or 'none'}")
    print(f"GRPO: {config.rl.prompts_per_step} prompts x G={config.rl.num_generations}, <= {config.rl.max_new_tokens} new tokens, "
          f"LoRA rank {config.peft.lora_rank}; {steps} steps, the first {warmup} not timed")
    print(text)
    for line in verdict(result):
        print(line)
    (out / "bench.md").write_text(text + "\n" + "".join(line + "\n" for line in verdict(result)))
    result["table"] = text
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run(args: argparse.Namespace) -> dict:
    """The bench target (llm.bench.TARGETS["grpo"])."""
    from llm.config.loading import load_config

    model = load_config(args.model, []).model if args.model else None
    return run_grpo_bench(load_config(args.config, args.config_overrides), steps=args.steps, vs_trl=args.vs_trl, out=args.out,
                          warmup=args.warmup, model=model)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
