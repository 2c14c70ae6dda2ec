"""Adapters in the Hugging Face PEFT format: DIR/adapter_model.safetensors + adapter_config.json,
which `peft.PeftModel.from_pretrained(transformers_model, DIR)` loads; and back.

Module names come from llm.interop.weight_map (the same table the full-model conversion uses).
PEFT's lora_A is (r, in) and lora_B is (out, r) in torch Linear layout, with in / out our
kernel's input / output dims flattened in order. GPT-2 fuses q, k and v into one c_attn:
separate q/k/v adapters of ranks r_q, r_k, r_v are exactly one c_attn adapter of rank
r_q + r_k + r_v whose B is block-diagonal (its rank and alpha go in rank_pattern /
alpha_pattern); importing a c_attn adapter gives q, k and v the shared A and their rows of B.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from llm.errors import UserError
from llm.interop.weight_map import weight_rules
from llm.model.layers import Dense
from llm.model.spec import ModelSpec
from llm.peft.adapters_io import unscanned_path, attach_adapters, flat_adapters
from llm.peft.lora import LoraInfo
from llm.peft.spec import PeftSpec
from llm.pytree import path_str

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
PREFIX = "base_model.model."


def module_map(spec: ModelSpec) -> dict[str, tuple[str, ...]]:
    """Hugging Face module name -> our unscanned module names ("blocks.0.attn.q"), for every
    linear layer (several of ours for GPT-2's fused c_attn)."""
    out = {}
    for rule in weight_rules(spec):
        if rule.hf.endswith(".weight") and all(p[-1] == "kernel" for p in rule.ours):
            out[rule.hf[: -len(".weight")]] = tuple(".".join(map(str, p[:-1])) for p in rule.ours)
    return out


def dense_shapes(module: nnx.Module) -> dict[str, tuple[tuple, tuple]]:
    """Our unscanned module name -> (in_shape, out_shape) of its kernel."""
    out = {}
    n_layers = module.spec.n_layers
    for path, layer in nnx.iter_modules(module):
        if not isinstance(layer, Dense):
            continue
        axes = layer.kernel.get_metadata()["logical_axes"]
        shape = tuple(layer.kernel.shape)[-len(axes):]
        shapes = (shape[: layer.n_in], shape[layer.n_in:])
        name = path_str(path).replace("/", ".")
        if module.spec.scan_layers and name.startswith("blocks."):
            for i in range(n_layers):
                out[f"blocks.{i}." + name[len("blocks."):]] = shapes
        else:
            out[name] = shapes
    return out


def _alpha_for(scale: float, rank: int, rslora: bool) -> float:
    return scale * (math.sqrt(rank) if rslora else rank)


def export_peft(
    directory: str | Path, adapters: Any, info: LoraInfo, spec: ModelSpec, peft: PeftSpec, base_model: str = "",
) -> Path:
    """Write `adapters` (our tree) as a PEFT LoRA adapter for the matching transformers model
    (every process calls this; process 0 writes)."""
    from safetensors.numpy import save_file

    flat = flat_adapters(adapters, info)
    scales = {".".join(map(str, unscanned_path(t, i))): t.scale for t in info.targets for i in (range(t.lead[0]) if t.lead else [None])}
    tensors, ranks, alphas = {}, {}, {}
    for hf_name, ours in module_map(spec).items():
        present = [name for name in ours if name in scales]
        if not present:
            continue
        if len({scales[n] for n in present}) > 1:
            raise UserError(f"{hf_name} fuses {', '.join(present)}, whose LoRA scales differ; PEFT needs one scale per module")
        a_parts, b_parts = [], []
        for name in ours:
            if name in scales:
                a = flat[name + ".lora_a"]
                b = flat[name + ".lora_b"]
                r = a.shape[-1]
                a_parts.append(a.reshape(-1, r).T)
                b_parts.append(b.reshape(r, -1).T)
            else:  # a fused part without an adapter: rank 0
                a_parts.append(None)
                b_parts.append(None)
        out_sizes = [p.shape[0] if p is not None else None for p in b_parts]
        known = next(s for s in out_sizes if s is not None)
        out_sizes = [s if s is not None else known for s in out_sizes]
        rank = sum(p.shape[0] for p in a_parts if p is not None)
        big_a = np.concatenate([p for p in a_parts if p is not None], axis=0)
        big_b = np.zeros((sum(out_sizes), rank), np.float32)
        row = col = 0
        for p, size in zip(b_parts, out_sizes):
            if p is not None:
                big_b[row : row + size, col : col + p.shape[1]] = p
                col += p.shape[1]
            row += size
        tensors[f"{PREFIX}{hf_name}.lora_A.weight"] = np.ascontiguousarray(big_a, np.float32)
        tensors[f"{PREFIX}{hf_name}.lora_B.weight"] = np.ascontiguousarray(big_b, np.float32)
        ranks[hf_name] = rank
        alphas[hf_name] = _alpha_for(scales[present[0]], rank, peft.rslora)
    if not tensors:
        raise UserError("no adapter maps to a Hugging Face module; nothing to export")
    r, alpha = Counter(zip(ranks.values(), alphas.values())).most_common(1)[0][0]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model or None,
        "r": int(r),
        "lora_alpha": float(alpha),
        "lora_dropout": float(peft.lora_dropout),
        "use_rslora": bool(peft.rslora),
        "target_modules": sorted(ranks),
        "rank_pattern": {k: int(v) for k, v in ranks.items() if v != r},
        "alpha_pattern": {k: float(alphas[k]) for k in ranks if alphas[k] != alpha},
        "fan_in_fan_out": bool(spec.is_gpt2),  # GPT-2's Conv1D stores (in, out)
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_dora": False,
    }
    directory = Path(directory)
    if jax.process_index() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(directory / WEIGHTS))
        (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def _pattern_value(patterns: dict, name: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def read_peft(directory: str | Path, spec: ModelSpec, shapes: dict[str, tuple[tuple, tuple]]) -> tuple[dict, dict, dict, dict]:
    """(our flat tensors, ranks, scales, adapter_config) from a PEFT LoRA directory."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise UserError(f"{str(directory)!r} is not a PEFT adapter ({CONFIG} + {WEIGHTS})")
    cfg = json.loads((directory / CONFIG).read_text())
    if cfg.get("peft_type") != "LORA" or cfg.get("use_dora"):
        raise UserError(f"{str(directory)!r} holds a {cfg.get('peft_type')}{' (DoRA)' if cfg.get('use_dora') else ''} adapter; only LoRA imports")
    raw = load_file(str(directory / WEIGHTS))
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in raw.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight", key)
        if m is None:
            raise UserError(f"{str(directory)!r} has tensor {key!r}, which is not a LoRA A/B weight; only plain LoRA imports")
        modules.setdefault(m.group(1), {})[m.group(2)] = value
    mapping = module_map(spec)
    tensors, ranks, scales = {}, {}, {}
    for hf_name, pair in modules.items():
        if hf_name not in mapping:
            raise UserError(
                f"the adapter targets {hf_name}, which this {spec.family} model does not have; it belongs to another model family or size"
            )
        a, b = pair["A"], pair["B"]
        r = a.shape[0]
        alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, hf_name, cfg.get("lora_alpha", r)))
        scale = alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
        row = 0
        for ours in mapping[hf_name]:
            in_shape, out_shape = shapes[ours]
            size_in, size_out = math.prod(in_shape), math.prod(out_shape)
            if a.shape[1] != size_in or b.shape[1] != r:
                raise UserError(
                    f"adapter {hf_name} has A {tuple(a.shape)} / B {tuple(b.shape)}, but this model's {ours} takes {size_in} inputs; "
                    "it was trained on a base of another shape"
                )
            rows = b[row : row + size_out]
            if rows.shape[0] != size_out:
                raise UserError(f"adapter {hf_name} has B {tuple(b.shape)}, too few rows for {ours}; it was trained on a base of another shape")
            tensors[ours + ".lora_a"] = a.T.reshape(*in_shape, r)
            tensors[ours + ".lora_b"] = rows.T.reshape(r, *out_shape)
            ranks[ours], scales[ours] = r, scale
            row += size_out
        if row != b.shape[0]:
            raise UserError(f"adapter {hf_name} has B {tuple(b.shape)}, more rows than this model's layer; it was trained on a base of another shape")
    return tensors, ranks, scales, cfg


def load_peft(directory: str | Path, graphdef: nnx.GraphDef, params: Any, peft: PeftSpec) -> tuple[nnx.GraphDef, dict, LoraInfo]:
    """Put a PEFT LoRA adapter onto our base (graphdef, params)."""
    module = nnx.eval_shape(lambda: nnx.merge(graphdef, params))
    tensors, ranks, scales, _ = read_peft(directory, module.spec, dense_shapes(module))
    return attach_adapters(graphdef, params, tensors, ranks, scales, peft)
