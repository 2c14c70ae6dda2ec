"""Adapters on their own: DIR/adapter.safetensors (per-layer A and B, named like
blocks.0.attn.q.lora_a whatever the layer layout) + DIR/adapter.json (the targets with their
rank and scale, and the model they belong to). Megabytes, where the model is gigabytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm.checkpoint.manager import model_mismatch
from llm.errors import UserError
from llm.interop.hf_export import to_host
from llm.peft.lora import LoraInfo, LoraTarget, add_lora, unmerge
from llm.peft.spec import PeftSpec
from llm.pytree import get_path, merge_trees, set_path

WEIGHTS = "adapter.safetensors"
META = "adapter.json"
FORMAT = "llm-lora-v1"


def unscanned_path(target: LoraTarget, layer: int | None) -> tuple:
    """Our module path with the layer index in place (scanned blocks carry it in the arrays)."""
    if layer is None:
        return target.path
    return (target.path[0], layer, *target.path[1:])


def flat_adapters(adapters: Any, info: LoraInfo) -> dict[str, np.ndarray]:
    """{"blocks.0.attn.q.lora_a": array, ...} on the host, one entry per layer (every process
    must call this: sharded arrays are gathered)."""
    out = {}
    for t in info.targets:
        for key in ("lora_a", "lora_b"):
            value = np.asarray(to_host(get_path(adapters, (*t.path, key))), np.float32)
            layers = range(t.lead[0]) if t.lead else [None]
            for i in layers:
                name = ".".join(str(k) for k in unscanned_path(t, i)) + "." + key
                out[name] = value[i] if i is not None else value
    return out


def save_adapters(directory: str | Path, adapters: Any, info: LoraInfo, model: dict, peft: dict) -> Path:
    """Write the adapters (process 0 only; the arrays are gathered on every process)."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    tensors = flat_adapters(adapters, info)
    if jax.process_index() != 0:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / WEIGHTS))
    meta = {
        "format": FORMAT,
        "targets": [
            {"module": ".".join(str(k) for k in unscanned_path(t, i)), "rank": t.rank, "scale": t.scale}
            for t in info.targets
            for i in (range(t.lead[0]) if t.lead else [None])
        ],
        "model": model,
        "peft": peft,
    }
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / META
    if not path.is_file() or not (Path(directory) / WEIGHTS).is_file():
        raise UserError(f"{str(directory)!r} holds no adapters ({META} + {WEIGHTS}); pass the adapter directory of a LoRA run")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise UserError(f"{str(path)!r} has format {meta.get('format')!r}, not {FORMAT}")
    return meta


def attach_adapters(
    graphdef: nnx.GraphDef, params: Any, tensors: dict[str, np.ndarray], ranks: dict[str, int], scales: dict[str, float],
    spec: PeftSpec, seed: int = 0,
) -> tuple[nnx.GraphDef, dict, LoraInfo]:
    """Wire adapters for the named modules (unscanned names, e.g. "blocks.0.attn.q") and fill
    them with `tensors` ({name + ".lora_a": (in.., r), name + ".lora_b": (r, out..)})."""
    scanned_names = {re.sub(r"^blocks\.\d+\.", "blocks.", n) for n in ranks}
    module = nnx.eval_shape(lambda: nnx.merge(graphdef, params))
    scanned = bool(module.spec.scan_layers)
    wanted = scanned_names if scanned else set(ranks)
    pattern = "^(" + "|".join(re.escape(n.replace(".", "/")) for n in sorted(wanted)) + ")/kernel$"
    by_module = lambda table: {n.replace(".", "/"): v for n, v in table.items()}  # noqa: E731
    if scanned:
        first = lambda table: {re.sub(r"^blocks\.\d+\.", "blocks.", n).replace(".", "/"): v for n, v in table.items()}  # noqa: E731
        rank_map, scale_map = first(ranks), first(scales)
        for name, rank in ranks.items():
            stacked = re.sub(r"^blocks\.\d+\.", "blocks.", name).replace(".", "/")
            if rank != rank_map[stacked] or scales[name] != scale_map[stacked]:
                raise UserError(f"the adapter's rank or scale differs between layers ({name}); load it with model.scan_layers=False")
    else:
        rank_map, scale_map = by_module(ranks), by_module(scales)
    target_spec = PeftSpec(max(ranks.values()), spec.lora_alpha, 0.0, pattern, spec.rslora, "", spec.quant_block, ())
    graphdef, adapted, info = add_lora(graphdef, params, target_spec, seed, rank_map, scale_map)
    found = {n.replace("/", ".") for n in (t.name for t in info.targets)}
    if found != wanted:
        missing = sorted(wanted - found)
        raise UserError(f"the adapter names modules this model lacks ({', '.join(missing[:3])}); it belongs to another model")
    base, fresh = unmerge(adapted)
    loaded: dict = {}
    for t in info.targets:
        for key in ("lora_a", "lora_b"):
            like = get_path(fresh, (*t.path, key))
            layers = range(t.lead[0]) if t.lead else [None]
            parts = []
            for i in layers:
                name = ".".join(str(k) for k in unscanned_path(t, i)) + "." + key
                if name not in tensors:
                    raise UserError(f"the adapter has no tensor {name!r}; it is incomplete or for another model")
                parts.append(np.asarray(tensors[name]))
            value = np.stack(parts) if t.lead else parts[0]
            if tuple(value.shape) != tuple(like.shape):
                raise UserError(
                    f"adapter tensor for {t.name}/{key} has shape {tuple(value.shape)}, but this model needs {tuple(like.shape)}; "
                    "the adapter was trained on a base of another shape"
                )
            set_path(loaded, (*t.path, key), jax.device_put(jnp.asarray(value, like.dtype), like.sharding))
    return graphdef, merge_trees(base, loaded), info


def load_adapters(directory: str | Path, graphdef: nnx.GraphDef, params: Any, model: dict, spec: PeftSpec) -> tuple[nnx.GraphDef, dict, LoraInfo]:
    """Put saved adapters onto a base (graphdef, params) whose model section is `model`."""
    from safetensors.numpy import load_file

    meta = read_meta(directory)
    diffs = model_mismatch(meta["model"], model)
    if diffs:
        raise UserError(f"the adapter in {str(directory)!r} was trained on another model ({'; '.join(diffs[:2])}); load it onto that base")
    names = {t["module"]: t for t in meta["targets"]}
    tensors = load_file(str(Path(directory) / WEIGHTS))
    return attach_adapters(
        graphdef, params, tensors, {n: t["rank"] for n, t in names.items()}, {n: t["scale"] for n, t in names.items()}, spec,
    )
