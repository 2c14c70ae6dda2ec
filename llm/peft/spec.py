"""PeftSpec: what a fine-tuning run adapts, read once from `config.peft` and checked.

Parameter paths are slash-joined keys of the pure-dict tree ("blocks/0/attn/q/kernel";
"blocks/attn/q/kernel" when the layers are scanned); regexes are matched with re.search.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import ml_collections

from llm.errors import ConfigError
from llm.pytree import path_str

TARGET_PRESETS = {
    "attention": r"attn/(q|k|v|o)/kernel$",
    "mlp": r"mlp/(gate|up|down)/kernel$",
    "all_linear": r"(attn/(q|k|v|o)|mlp/(gate|up|down))/kernel$",
}
QUANT_FORMATS = ("", "int8", "nf4")


@dataclasses.dataclass(frozen=True)
class PeftSpec:
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_targets: str  # a regex (presets already expanded)
    rslora: bool
    quantize: str
    quant_block: int
    freeze: tuple[str, ...]

    @property
    def lora(self) -> bool:
        return self.lora_rank > 0

    def scale(self, rank: int | None = None) -> float:
        """LoRA's multiplier: alpha / rank, or alpha / sqrt(rank) with rsLoRA."""
        r = rank or self.lora_rank
        return self.lora_alpha / (r**0.5 if self.rslora else r)


def peft_spec(config: ml_collections.ConfigDict) -> PeftSpec:
    p = config.peft
    if p.lora_rank < 0:
        raise ConfigError(f"peft.lora_rank={p.lora_rank} must be >= 0 (0 = no LoRA)")
    if not 0.0 <= p.lora_dropout < 1.0:
        raise ConfigError(f"peft.lora_dropout={p.lora_dropout} must be in [0, 1)")
    if p.quantize not in QUANT_FORMATS:
        raise ConfigError(f"peft.quantize={p.quantize!r} is not one of {', '.join(map(repr, QUANT_FORMATS))}")
    if p.quantize and p.lora_rank == 0:
        raise ConfigError(f"peft.quantize={p.quantize!r} freezes a quantized base and trains LoRA adapters; set peft.lora_rank > 0")
    if p.quantize and (p.quant_block < 2 or p.quant_block % 2):
        raise ConfigError(f"peft.quant_block={p.quant_block} must be an even number >= 2")
    if p.lora_rank and p.freeze:
        raise ConfigError("peft.freeze applies to full fine-tuning; with LoRA the whole base is frozen (set peft.freeze=() or lora_rank=0)")
    targets = TARGET_PRESETS.get(p.lora_targets, p.lora_targets)
    for pattern in (targets, *p.freeze):
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"peft regex {pattern!r} is invalid ({err})") from None
    return PeftSpec(
        lora_rank=int(p.lora_rank),
        lora_alpha=float(p.lora_alpha),
        lora_dropout=float(p.lora_dropout),
        lora_targets=targets,
        rslora=bool(p.rslora),
        quantize=p.quantize,
        quant_block=int(p.quant_block),
        freeze=tuple(p.freeze),
    )


def leaf_paths(tree: Any) -> list[str]:
    return [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
