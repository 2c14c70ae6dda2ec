"""`llm bench dpo`: our DPO step against trl.DPOTrainer on PyTorch CPU, on the same model, pairs,
batch and LoRA rank, in one run.

  llm bench dpo --config configs/dpo_lora_tiny.py --vs-trl
  llm bench dpo --config configs/dpo_lora_tiny.py --model configs/small.py --vs-trl

The model is the config's shape (or --model's), initialised by transformers and saved as a
Hugging Face directory with a byte-level BPE tokenizer trained on the pairs; both sides start from
it (ours through --init-from). The pairs are `--data`'s (JSONL or a manifest's preference split)
or a few modules' built-in pairs, plain text (data.strings_as_chat=false: TRL's non-conversational
form; the tokenizer adds no BOS, so neither do we), only those that fit data.seq_len whole. Ours
runs `llm dpo` (run_dpo) for --steps steps; TRL runs the same pairs in the order our steps took
them, with a batch of our mean pairs per step, in f32 and, where the CPU has AMX or AVX-512 BF16,
in bf16 autocast too (its fastest mode there).

Each side runs in its own process: peak memory is that process's peak RSS. tokens/s counts real
tokens the same way on both sides (TRL's `num_tokens`: prompt + answer for each of a pair's two
sequences; no padding), over the steps after the first (which compiles / warms up). Benchmarks
are not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import ml_collections

from llm.cpu import features
from llm.errors import UserError

SPECIALS = ["<s>", "</s>", "<pad>"]  # ids 0, 1, 2
BUILTIN_FILES = ("json", "email", "http", "urllib", "logging")  # stdlib packages the default pairs come from


def cpu_bf16() -> list[str]:
    """The CPU's bf16 matrix flags (AMX, AVX-512 BF16); [] off Linux x86-64."""
    return features.bf16_flags()


def cpu_name() -> str:
    return features.cpu_model() or platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------
# The shared inputs: pairs, tokenizer, model


def read_pairs(data: str | None, out: Path) -> list[dict]:
    """Plain-text {prompt, chosen, rejected} records: --data's, or the built-in pairs of a few
    standard library packages (written under `out`)."""
    from llm.data.builtin import build_builtin, manifest_file, manifest_path_for
    from llm.data.jsonl import read_jsonl

    if not data:
        from llm.data.sources import stdlib_files, stdlib_root

        root = stdlib_root()
        files = [f for f in stdlib_files() if Path(f).relative_to(root).parts[0] in BUILTIN_FILES]
        build_builtin(out / "builtin", files=files)
        data = str(out / "builtin" / "manifest.json")
    manifest = manifest_path_for(data)
    path = manifest_file(manifest, "preference", "train") if manifest is not None else data
    if not Path(path).is_file():
        raise UserError(f"--data {data!r} is not a JSONL file or a manifest.json; pass preference pairs")
    pairs = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for _, r in read_jsonl(path, "--data")
             if isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("prompt", "chosen", "rejected"))]
    if not pairs:
        raise UserError(f"{path} holds no plain-text {{prompt, chosen, rejected}} records; the bench compares TRL's string form")
    return pairs


def train_tokenizer(texts: list[str], vocab_size: int, out: Path):
    """A byte-level BPE (GPT-2 / Llama 3 style) with <s>, </s>, <pad> at ids 0-2, saved as
    transformers saves one."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(out)
    return fast


def build_hf_model(config: ml_collections.ConfigDict, out: Path, seed: int = 0) -> None:
    """The config's model as a transformers Llama, HF's own random init, f32, saved to `out`."""
    import torch
    import transformers

    from llm.bench.hf_peer import hf_config

    if config.model.family != "llama":
        raise UserError(f"model.family={config.model.family!r}: the DPO bench maps LoRA targets for Llama models only; use a llama config")
    hf = hf_config(config)
    hf.bos_token_id, hf.eos_token_id, hf.pad_token_id = 0, 1, 2
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf, dtype=torch.float32)
    model.save_pretrained(out)


def fitting(pairs: list[dict], tokenizer, seq_len: int) -> list[dict]:
    """The pairs whose two sequences fit one row whole (2 prompt + chosen + rejected - 2 <= seq_len,
    EOS included), so neither side cuts a prompt."""
    out = []
    for p in pairs:
        n = [len(tokenizer(t)["input_ids"]) for t in (p["prompt"], p["prompt"] + p["chosen"], p["prompt"] + p["rejected"])]
        if n[0] >= 1 and (n[1] + 1 - 1) + (n[2] + 1 - 1) <= seq_len:  # (+ EOS, - the shift) per sequence
            out.append(p)
    return out


def bench_config(config: ml_collections.ConfigDict, model: ml_collections.ConfigDict | None, steps: int) -> ml_collections.ConfigDict:
    """The DPO config as a short bench run: --model's shape, TRL's plain-text data form, every
    step logged, no eval, exports or extra timing."""
    from llm.config.loading import apply_overrides

    config = apply_overrides(config, [
        f"train.steps={steps}", "train.log_every=1", "train.eval_every=0", "train.measure_peak=false",
        "finetune.export_merged=false", "finetune.patience=0", "checkpoint.async_save=false",
        "data.strings_as_chat=false", "data.add_bos=false",
    ])
    with config.unlocked():
        if model is not None:
            config.model = model
        config.model.max_seq_len = max(int(config.model.max_seq_len), int(config.data.seq_len))
        config.model.vocab_size = max(int(config.model.vocab_size), 256 + len(SPECIALS))
    return config


# ---------------------------------------------------------------------------------------------
# Our side (in a child process)


def our_side(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """run_dpo, then what its steps ran: the pairs of each step (record indices, in order), their
    real tokens, the loop's step times and first loss, and this process's peak RSS."""
    from llm.bench.trl_peer import peak_rss_bytes
    from llm.finetune.pair_data import load_pair_data
    from llm.finetune.preference import run_dpo

    run_dpo(config, workdir, overwrite=True)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    data = load_pair_data(config, "policy", int(config.dpo.max_pairs_per_row))
    plan = data.batches("train")
    step_pairs = [[data.train[i].index for row in plan.global_rows(k) for i in row] for k in range(len(rows))]
    by_index = {p.index: p for p in data.train}
    tokens = [sum(2 * len(by_index[i].prompt) + len(by_index[i].chosen) + len(by_index[i].rejected) for i in ids) for ids in step_pairs]
    times = [r.get("step_time") for r in rows]
    timed = [t for t in times[1:] if t]
    out = {"steps": rows, "first_step_loss": rows[0]["loss"], "step_pairs": step_pairs, "tokens_per_step": tokens,
           "peak_rss_bytes": peak_rss_bytes(), "dtype": "float32", "kept_pairs": len(data.train)}
    if timed:
        out["step_time"] = sum(timed) / len(timed)
        out["tokens_per_s"] = sum(tokens[1 : 1 + len(timed)]) / sum(timed)
    return out


def run_ours(config: ml_collections.ConfigDict, workdir: Path, timeout: float = 3600, module: str = "llm.bench.dpo") -> dict:
    """`module`'s our_side (its main) in a fresh process (its own peak RSS)."""
    from llm.checkpoint.params_io import config_to_json

    with tempfile.TemporaryDirectory() as tmp:
        spec, result = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"config": config_to_json(config), "workdir": str(workdir), "out": str(result)}))
        proc = subprocess.run([sys.executable, "-m", module, str(spec)], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not result.is_file():
            lines = proc.stderr.strip().splitlines()
            last = lines[-1] if lines else "no error output"  # the CLI prints a UserError's first line only
            raise UserError(f"our side ({module}) failed (exit {proc.returncode}): {last}\n" + "\n".join(lines[-15:]))
        return json.loads(result.read_text())


def main(argv: Sequence[str]) -> int:
    """`python -m llm.bench.dpo SPEC.json`: the child side of run_ours."""
    from llm.checkpoint.params_io import config_from_json

    spec = json.loads(Path(argv[0]).read_text())
    out = our_side(config_from_json(spec["config"]), Path(spec["workdir"]))
    Path(spec["out"]).write_text(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------------------------
# The bench


def table(rows: list[dict]) -> str:
    head = "| side | dtype | pairs/step | real tokens/s | step time | peak RSS | first-step loss |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else "-"
        step = f"{1e3 * r['step_time']:.0f} ms" if r.get("step_time") else "-"
        lines.append(f"| {r['side']} | {r['dtype']} | {r['pairs_per_step']:.1f} | {tps} | {step} | "
                     f"{r['peak_rss_bytes'] / 2**20:.0f} MiB | {r['first_step_loss']:.6f} |")
    return "\n".join(lines)


def run_dpo_bench(config: ml_collections.ConfigDict, *, steps: int, vs_trl: bool, out: str | Path, data: str | None = None,
                  model: ml_collections.ConfigDict | None = None) -> dict:
    """Measure our DPO run (and TRL's on the same inputs); print and return the figures."""
    if steps < 2:
        raise UserError(f"--steps {steps}: the DPO bench needs at least 2 (the first step compiles and is not timed)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = bench_config(config, model, steps)
    hf_dir = out / "hf"
    pairs = read_pairs(data, out)
    texts = [p[k] for p in pairs for k in ("prompt", "chosen", "rejected")]
    tokenizer = train_tokenizer(texts, int(config.model.vocab_size), hf_dir)
    build_hf_model(config, hf_dir)
    pairs = fitting(pairs, tokenizer, int(config.data.seq_len))
    per_step = int(config.data.batch_size) * int(config.dpo.max_pairs_per_row)
    if len(pairs) < per_step:
        raise UserError(f"only {len(pairs)} pairs fit data.seq_len={config.data.seq_len} whole; pass more --data or raise data.seq_len")
    pairs = pairs[: steps * per_step]
    (out / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (out / "eval.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs[:8]))

    from llm.finetune.start import apply_data, apply_init_from

    config = apply_data(apply_init_from(config, str(hf_dir)), str(out / "pairs.jsonl"))
    with config.unlocked():
        config.data.eval_path = str(out / "eval.jsonl")  # every pair trains; the final held-out pass is short
    ours = run_ours(config, out / "llm")
    ours.update(side="llm", pairs_per_step=sum(map(len, ours["step_pairs"])) / len(ours["step_pairs"]))
    result = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "bf16_flags": cpu_bf16()},
        "config": {"d_model": config.model.d_model, "n_layers": config.model.n_layers, "vocab_size": config.model.vocab_size,
                   "seq_len": config.data.seq_len, "batch_rows": config.data.batch_size, "max_pairs_per_row": config.dpo.max_pairs_per_row,
                   "lora_rank": config.peft.lora_rank, "loss": config.dpo.loss, "steps": steps, "pairs": len(pairs)},
        "ours": ours,
    }
    rows = [ours]
    if vs_trl:
        from llm.bench.trl_peer import run_in_subprocess

        ordered = [pairs[i] for ids in ours["step_pairs"] for i in ids]  # the pairs (record index) in the order our steps took them
        batch = max(1, round(ours["pairs_per_step"]))
        kwargs = dict(loss_type=config.dpo.loss, beta=config.dpo.beta, steps=steps, lr=config.optim.lr, batch_size=batch,
                      lora_rank=config.peft.lora_rank, lora_alpha=config.peft.lora_alpha, lora_targets=config.peft.lora_targets,
                      adam_b1=config.optim.b1, adam_b2=config.optim.b2, adam_eps=config.optim.eps)
        for bf16 in ([False, True] if cpu_bf16() else [False]):
            peer = run_in_subprocess("dpo", hf_dir, None, ordered, bf16=bf16, **kwargs)
            peer.pop("token_ids", None)
            peer.update(side=f"trl {peer['versions']['trl']}", pairs_per_step=float(batch))
            rows.append(peer)
            result["trl_bf16" if bf16 else "trl"] = peer
        best = max(rows[1:], key=lambda r: r.get("tokens_per_s") or 0)
        result["speedup_vs_trl"] = ours["tokens_per_s"] / best["tokens_per_s"]
        result["memory_vs_trl"] = ours["peak_rss_bytes"] / best["peak_rss_bytes"]
        result["first_step_loss_diff"] = abs(ours["first_step_loss"] - rows[1]["first_step_loss"])
    text = table(rows)
    machine = result["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, bf16 flags: {', '.join(machine['bf16_flags']) or 'none'}")
    print(text)
    if vs_trl:
        print(f"tokens/s vs TRL's fastest mode: {result['speedup_vs_trl']:.2f}x; peak RSS vs it: {result['memory_vs_trl']:.2f}x")
    (out / "bench.md").write_text(text + "\n")
    result["table"] = text
    return result


def run(args: argparse.Namespace) -> dict:
    """The bench target (llm.bench.TARGETS["dpo"])."""
    from llm.config.loading import load_config

    model = load_config(args.model, []).model if args.model else None
    return run_dpo_bench(load_config(args.config, args.config_overrides), steps=args.steps, vs_trl=args.vs_trl,
                         out=args.out, data=args.data, model=model)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
