"""The cost report of a fine-tuning run (<workdir>/cost.json) and `llm compare`'s table.

FLOPs and memory come from XLA's analysis of the compiled train step, on the run's own mesh,
shapes and shardings: what the step really executes (frozen weight-gradient matmuls that
were removed do not count), per device. Beside it, model_step_flops is the DESIGN.md formula
with frozen weights' gradients left out (llm.train.flops), which stays right where XLA counts
a scanned loop body once. Tokens/s is measured by the training loop.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import jax

from llm.compile.analysis import compiled_figures
from llm.data.batch import abstract_batch
from llm.errors import UserError
from llm.peft.quant import QTensor, quantized_bytes
from llm.pytree import abstract_like
from llm.train.flops import partitioned_flops_per_token
from llm.train.metrics import read_metrics

COST_FILE = "cost.json"


def count(tree: Any) -> int:
    """Logical values in a tree (a QTensor counts the values it stands for)."""
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, QTensor))
    return sum(int(x.size) for x in leaves)


def step_analysis(setup, state, frozen) -> dict:
    """XLA's flops and memory for one train step, from the jitted step lowered on abstract inputs."""
    from llm.finetune.tasks import extra_batch_keys

    c = setup.config
    batch = abstract_batch(c.data.batch_size, c.data.seq_len, setup.batch_sharding, extra_batch_keys(c))
    figures = compiled_figures(setup.train_step.lower(abstract_like(state), batch, frozen).compile())
    out = {"step_flops": float("nan") if figures.flops is None else figures.flops}
    if figures.total_bytes is not None:
        out.update(
            peak_memory_bytes=max(figures.peak_bytes or 0, figures.total_bytes),
            temp_bytes=figures.temp_bytes,
            argument_bytes=figures.argument_bytes,
        )
    return out


def from_metrics(workdir: str | Path) -> dict:
    """The latest eval loss, speed and the start weights' eval loss from metrics.jsonl, for a
    re-run that had no steps left to take (its own summary has none of them)."""
    path = Path(workdir) / "metrics.jsonl"
    out: dict = {}
    if not path.is_file():
        return out
    for record in read_metrics(path):
        if record.get("eval_loss") is not None:
            out["start_eval_loss" if record.get("step") == 0 else "eval_loss"] = record["eval_loss"]
        for key in ("tokens_per_s", "step_time"):
            if record.get(key) is not None:
                out[key] = record[key]
    return out


def step_flops_per_token(config, spec, trainable: Any, frozen: Any) -> float:
    """The DESIGN.md formula for a fine-tuning step: only `trainable` gets weight gradients; no
    LM head for the tasks that never compute logits (classification, reward models); LoRA DPO's
    adapters-off reference adds one forward pass (adapter matmuls included, their B is zero)."""
    task = config.finetune.task
    flops = partitioned_flops_per_token(spec, config.data.seq_len, trainable, frozen, lm_head=task not in ("classification", "reward"))
    if task == "dpo":
        from llm.finetune.preference import resolve_reference

        if resolve_reference(config) == "adapters_off":
            flops += partitioned_flops_per_token(spec, config.data.seq_len, {}, frozen) + 2 * count(trainable)
    return flops


def cost_report(setup, state, frozen, summary: dict, method: str) -> dict:
    trainable = count(state.params)
    total = trainable + count(frozen)
    frozen_bytes, _ = quantized_bytes(frozen)
    report = {
        "method": method,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / max(total, 1),
        "frozen_bytes": int(frozen_bytes),
        "trainable_bytes": int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state.params))),
        "tokens_per_s": summary.get("tokens_per_s"),
        "step_time": summary.get("step_time"),
        "eval_loss": summary.get("eval_loss"),
        "start_eval_loss": summary.get("start_eval_loss"),
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "batch": [setup.config.data.batch_size, setup.config.data.seq_len],
        "scan_layers": bool(setup.spec.scan_layers),
    }
    report.update(step_analysis(setup, state, frozen))
    c = setup.config
    per_token = step_flops_per_token(c, setup.spec, state.params, frozen)
    report["model_step_flops"] = per_token * c.data.batch_size * c.data.seq_len / jax.device_count()
    if setup.spec.scan_layers:
        report["note"] = (
            "scanned layers: XLA counts the loop body once, so step_flops covers one layer of the stack; "
            "model_step_flops (the DESIGN.md formula without frozen weight gradients) counts them all"
        )
    return report


def method_name(config) -> str:
    p = config.peft
    if p.lora_rank:
        return f"q{p.quantize}-lora r{p.lora_rank}" if p.quantize else f"lora r{p.lora_rank}"
    return f"frozen {len(p.freeze)} pattern(s)" if p.freeze else "full"


def write_cost(workdir: Path, report: dict) -> Path:
    path = Path(workdir) / COST_FILE
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def read_cost(workdir: str | Path) -> dict:
    path = Path(workdir) / COST_FILE
    if not path.is_file():
        raise UserError(f"{str(workdir)!r} has no {COST_FILE}; run `llm sft` (or `llm classify`) into it first")
    return json.loads(path.read_text())


def _fmt(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "int":
        return f"{value / 1e6:.3f}M" if value >= 1e5 else str(value)
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "flops":
        return f"{value / 1e9:.1f} G"
    if kind == "bytes":
        return f"{value / 2**20:.0f} MiB"
    if kind == "s":
        return f"{value:.3f} s"
    if kind == "rate":
        return f"{value:.0f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


ROWS = (
    ("method", "method", "str", False),
    ("trainable params", "trainable_params", "int", True),
    ("trainable %", "trainable_fraction", "pct", False),
    ("total params", "total_params", "int", False),
    ("frozen bytes", "frozen_bytes", "bytes", True),
    ("step FLOPs (XLA)", "step_flops", "flops", True),
    ("step FLOPs (model)", "model_step_flops", "flops", True),
    ("peak memory", "peak_memory_bytes", "bytes", True),
    ("step time", "step_time", "s", True),
    ("tokens/s", "tokens_per_s", "rate", True),
    ("start eval loss", "start_eval_loss", "float", False),
    ("eval loss", "eval_loss", "float", False),
    ("accuracy", "accuracy", "pct", False),
    ("macro F1", "macro_f1", "float", False),
)


def compare_table(names: Sequence[str], reports: Sequence[dict]) -> str:
    """A markdown table, one column per run; sizes and speeds also as a ratio to the first run."""
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    first = reports[0]
    for label, key, kind, ratio in ROWS:
        if all(r.get(key) is None for r in reports):
            continue
        cells = []
        for r in reports:
            text = _fmt(r.get(key), kind)
            base, value = first.get(key), r.get(key)
            if ratio and r is not first and isinstance(base, (int, float)) and isinstance(value, (int, float)) and base:
                text += f" ({value / base:.2f}x)"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
