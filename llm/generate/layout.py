"""The generator's own copy of the weights, laid out for decoding on CPU.

Every Dense kernel (found from the model's layers) and an untied LM head are held pre-packed
for the CPU decode kernel (llm.generate.panel_matmul.PanelKernel), which multiplies the batch's few rows by them at close
to the machine's bandwidth where XLA's dots repack the weights on every call. Each output column
is still one f32 dot product over the same inputs, so results agree with XLA's dots to rounding.

Packed only where the kernel applies: on CPU with the kernel built, for f32 kernels of a model
whose layers are a list (a scanned stack, kernels that are not plain arrays, e.g. quantized
ones, and sharded params are returned as they are).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llm.generate import panel_matmul
from llm.model.layers import kernel_input_dims
from llm.pytree import key_name, path_str


def _packable(leaf: Any) -> bool:
    return (
        isinstance(leaf, jax.Array)
        and leaf.dtype == jnp.float32
        and len(leaf.sharding.device_set) == 1
    )


def pack_kernels(model: nnx.Module, params: Any) -> Any:
    """params (model's, as a pure dict) with every Dense kernel and an untied head ("head",
    2-D) as PanelKernels, when the CPU decode kernel is available; otherwise params unchanged.
    The kernels and their input dims come from the model's Dense layers."""
    if not isinstance(params, dict) or not panel_matmul.available():
        return params
    n_ins = {path_str(path): n for path, n in kernel_input_dims(model).items()}
    scanned = bool(model.spec.scan_layers)

    def pack(path, leaf):
        n_in = n_ins.get(path_str(path))
        if n_in is None or (scanned and key_name(path[0]) == "blocks") or not _packable(leaf):
            return leaf
        return panel_matmul.pack(leaf, n_in)

    out = jax.tree_util.tree_map_with_path(pack, params)
    head = params.get("head")
    if _packable(head) and head.ndim == 2:
        out["head"] = panel_matmul.pack(head, 1)
    return out
