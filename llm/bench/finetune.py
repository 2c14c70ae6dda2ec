"""`llm bench finetune`: the same model and batch fine-tuned fully, with LoRA, QLoRA and a frozen
backbone, each a short `llm sft` run on synthetic tokens, then `llm compare`'s table.

  llm bench finetune --config configs/gpt2_124m.py --config.data.batch_size=4 --config.data.seq_len=512 \
      --steps 4 --methods full,lora,qlora,frozen --out runs/ftbench

Every number comes from the runs' cost.json: step FLOPs and peak memory from XLA's analysis of
the compiled step, step time measured by the training loop (the first step, which compiles, is
excluded). Benchmarks are not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import ml_collections

from llm.config.loading import apply_overrides, load_config
from llm.config.validate import validate_config
from llm.errors import UserError
from llm.finetune.cost import compare_table, read_cost
from llm.finetune.sft import run_sft

METHODS = {
    "full": [],
    "lora": ["peft.lora_rank=8", "peft.lora_targets=all_linear"],
    "qlora": ["peft.lora_rank=8", "peft.lora_targets=all_linear", "peft.quantize=nf4"],
    "frozen": ["peft.freeze=^(embed|pos_embed)$,^blocks/0/"],  # embeddings and the first layer
}


def bench_config(config: ml_collections.ConfigDict, method: str, steps: int) -> ml_collections.ConfigDict:
    """The model config as a short SFT run of `method` on synthetic tokens, no outputs written."""
    overrides = [
        "data.source=synthetic", "data.format=sft", f"train.steps={steps}", f"train.log_every={steps}",
        "train.eval_every=0", "train.measure_peak=false", "finetune.task=sft", "finetune.export_merged=false",
        "checkpoint.async_save=false", *METHODS[method],
    ]
    if method == "frozen" and config.model.scan_layers:  # one stacked tensor per weight: no "first layer" to name
        overrides[-1] = "peft.freeze=^(embed|pos_embed)$"
    out = apply_overrides(copy.deepcopy(config), overrides)
    validate_config(out)
    return out


def parse_methods(text: str) -> list[str]:
    methods = [m for m in text.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UserError(f"--methods {text!r}: unknown method {unknown[0] if unknown else '(none)'!r}; use a comma-separated list of {', '.join(METHODS)}")
    return methods


def run_finetune_bench(config: ml_collections.ConfigDict, methods: list[str], steps: int, out: str | Path) -> dict:
    """One workdir per method under `out`, their table printed and in out/compare.md; returns
    {method: its cost report}."""
    if steps < 3:
        raise UserError(f"--steps {steps}: the fine-tuning bench needs at least 3 (the first step compiles)")
    out = Path(out)
    reports = []
    for method in methods:
        run_sft(bench_config(config, method, steps), out / method, overwrite=True)
        reports.append(read_cost(out / method))
    table = compare_table(methods, reports)
    print(table)
    (out / "compare.md").write_text(table + "\n")
    return dict(zip(methods, reports))


def run(args: argparse.Namespace) -> dict:
    """The bench target (llm.bench.TARGETS["finetune"])."""
    methods = parse_methods(args.methods)
    return run_finetune_bench(load_config(args.config, args.config_overrides), methods, args.steps, args.out)
