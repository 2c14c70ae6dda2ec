"""The same run as full fine-tuning, LoRA, QLoRA or a frozen backbone: the config each method
plans with. A config that already is one of them keeps its own settings (rank, targets,
quantization, freeze patterns); the others take `llm bench finetune`'s (llm.bench.finetune.METHODS),
so a plan and a bench of the same model compare the same things."""

from __future__ import annotations

import copy

import ml_collections

from llm.bench.finetune import METHODS as BENCH_METHODS
from llm.config.loading import apply_overrides
from llm.config.validate import validate_config
from llm.errors import UserError

NAMES = ("full", "lora", "qlora", "frozen")


def method_of(config: ml_collections.ConfigDict) -> str:
    p = config.peft
    if p.lora_rank:
        return "qlora" if p.quantize else "lora"
    return "frozen" if p.freeze else "full"


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in NAMES]
    if unknown or not methods:
        raise UserError(f"--compare {text!r}: unknown method {unknown[0] if unknown else '(none)'!r}; use a comma-separated list of {', '.join(NAMES)}")
    return list(dict.fromkeys(methods))


def method_config(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    """`config` turned into `method` (see the module docstring)."""
    own = method_of(config)
    out = copy.deepcopy(config)
    if method == own:
        return out
    p = out.peft
    has_lora = bool(config.peft.lora_rank)
    overrides: list[str] = []
    if method in ("lora", "qlora") and not has_lora:
        overrides += [o for o in BENCH_METHODS["lora"]]
    if method == "frozen" and not config.peft.freeze:
        overrides += ["peft.freeze=^(embed|pos_embed)$" if config.model.scan_layers else BENCH_METHODS["frozen"][0]]
    apply_overrides(out, overrides)
    if method in ("full", "frozen"):
        p.lora_rank, p.quantize = 0, ""
    if method != "frozen":
        p.freeze = ()
    if method == "lora":
        p.quantize = ""
    if method == "qlora" and not p.quantize:
        p.quantize = "nf4"
    validate_config(out)
    return out
