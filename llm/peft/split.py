"""From the full parameter tree to (graphdef, trainable, frozen): LoRA adapters over a frozen
(optionally quantized) base, or full fine-tuning minus the leaves `peft.freeze` names.

Frozen leaves are passed to the train step beside the trainable ones and never
differentiated, so they get no weight-gradient computation and no optimizer state.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llm.errors import UserError
from llm.model.layers import kernel_input_dims
from llm.peft.abstract import call, is_abstract
from llm.peft.lora import abstract_module, add_lora, unmerge, with_runtime_leaves
from llm.peft.quant import QTensor, can_quantize, quantize
from llm.peft.spec import PeftSpec
from llm.pytree import merge_trees, path_keys, path_str, set_path

log = logging.getLogger("llm")


def combine(trainable: Any, frozen: Any) -> dict:
    """The full tree the graphdef merges with (trainable and frozen leaves are disjoint)."""
    return merge_trees(trainable, frozen)


def _quant_shardings(leaf: jax.Array, lead: int, n_in: int, fmt: str, block: int) -> Any:
    """QTensor-shaped shardings: the leaf's lead axes, its first input-dim sharding on the rows
    and its first output-dim sharding on the columns (major dims, so shards stay contiguous),
    where the sizes divide; None when the leaf is not on a named mesh."""
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return None
    mesh = sharding.mesh
    spec = tuple(sharding.spec) + (None,) * (leaf.ndim - len(tuple(sharding.spec)))

    def shards(entry) -> int:
        axes = entry if isinstance(entry, tuple) else (entry,)
        return math.prod(mesh.shape[a] for a in axes if a is not None)

    in_specs, out_specs = spec[lead : lead + n_in], spec[lead + n_in :]
    rows_entry = in_specs[0] if all(s is None for s in in_specs[1:]) else None
    cols_entry = out_specs[0] if all(s is None for s in out_specs[1:]) else None
    rows = math.prod(leaf.shape[lead : lead + n_in])
    cols = math.prod(leaf.shape[lead + n_in :])
    if rows_entry is not None and rows % (shards(rows_entry) * block):
        rows_entry = None
    if cols_entry is not None and cols % shards(cols_entry):
        cols_entry = None
    named = NamedSharding(mesh, PartitionSpec(*spec[:lead], rows_entry, cols_entry))
    abstract = jax.eval_shape(lambda x: quantize(x, fmt, block, lead, n_in), jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), [named, named])


def quantize_base(base: dict, module: nnx.Module, fmt: str, block: int) -> dict:
    """Every frozen matrix (kernels, embeddings, LM head) as a QTensor; vectors (norms, biases)
    and matrices whose input size is not a multiple of `block` stay as they are. One jitted
    program quantizes them all, each output placed like its kernel (see _quant_shardings); an
    abstract base (llm.peft.abstract) gets the QTensors' shapes and shardings only."""
    n_ins = {path_str(path): n for path, n in kernel_input_dims(module).items()}
    scanned = bool(module.spec.scan_layers)
    plan: dict[str, tuple[int, int]] = {}  # path -> (lead, n_in) of the leaves to quantize
    kept = []
    leaves = jax.tree_util.tree_leaves_with_path(base, is_leaf=lambda x: isinstance(x, QTensor))
    for path, leaf in leaves:
        name = path_str(path)
        lead = 1 if scanned and path_keys(path)[0] == "blocks" else 0
        n_in = n_ins.get(name, 1)
        if isinstance(leaf, QTensor):
            continue
        if can_quantize(tuple(leaf.shape), lead, n_in, block):
            plan[name] = (lead, n_in)
        elif leaf.ndim - lead >= 2:
            kept.append(name)
    if kept:
        log.warning("peft.quantize: %d matrices stay unquantized (input size not a multiple of %d): %s", len(kept), block, ", ".join(kept[:4]))
    picked = {path_str(p): leaf for p, leaf in leaves if path_str(p) in plan}
    shardings = {name: _quant_shardings(leaf, *plan[name], fmt, block) for name, leaf in picked.items()}
    if any(s is None for s in shardings.values()):
        shardings = None
    quantize_all = jax.jit(
        lambda tree: {name: quantize(x, fmt, block, *plan[name]) for name, x in tree.items()}, out_shardings=shardings,
    )
    quantized = call(quantize_all, picked, abstract=is_abstract(picked))
    out: dict = {}
    for path, leaf in leaves:
        keys = path_keys(path)
        set_path(out, keys, quantized.get(path_str(keys), leaf))
    return out


def freeze_mask(params: Any, patterns: tuple[str, ...]) -> dict[str, bool]:
    """Leaf path -> frozen, for full fine-tuning with `peft.freeze` regexes."""
    compiled = [re.compile(p) for p in patterns]
    paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    for pattern in compiled:
        if not any(pattern.search(p) for p in paths):
            raise UserError(
                f"peft.freeze regex {pattern.pattern!r} matches no parameter; paths look like {', '.join(paths[:3])}"
            )
    return {p: any(c.search(p) for c in compiled) for p in paths}


def split_params(
    graphdef: nnx.GraphDef, params: Any, spec: PeftSpec, seed: int, extra_trainable: dict | None = None
) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, trainable, frozen). `extra_trainable` (e.g. a classification head) is always trained."""
    if spec.lora:
        graphdef, adapted, info = add_lora(graphdef, params, spec, seed)
        frozen, trainable = unmerge(adapted)
        if spec.quantize:  # the graph holds the dropout slots too: give it their (abstract) leaves
            module = abstract_module(graphdef, with_runtime_leaves(adapted, info, None))
            frozen = quantize_base(frozen, module, spec.quantize, spec.quant_block)
    else:
        mask = freeze_mask(params, spec.freeze)
        trainable, frozen = {}, {}
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            keys = path_keys(path)
            set_path(frozen if mask[path_str(keys)] else trainable, keys, leaf)
    if extra_trainable:
        trainable = merge_trees(trainable, extra_trainable)
    if not jax.tree_util.tree_leaves(trainable):
        raise UserError(f"peft.freeze={spec.freeze!r} freezes every parameter; leave something to train")
    return graphdef, trainable, frozen
