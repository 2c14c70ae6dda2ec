"""The generator's own copy of the weights, laid out for decoding on CPU.

Every layer matrix and an untied LM head are held pre-packed for the CPU decode kernel
(llm.generate.panel_matmul.PanelKernel), which multiplies the batch's few rows by them at close
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

from llm.generate import panel_matmul

# The layer kernels pack_kernels packs, with how many of their leading dims are inputs.
LAYER_KERNELS = {
    ("attn", "q"): 1, ("attn", "k"): 1, ("attn", "v"): 1, ("attn", "o"): 2,
    ("mlp", "gate"): 1, ("mlp", "up"): 1, ("mlp", "down"): 1,
}


def _packable(leaf: Any) -> bool:
    return (
        isinstance(leaf, jax.Array)
        and leaf.dtype == jnp.float32
        and len(leaf.sharding.device_set) == 1
    )


def pack_kernels(params: Any) -> Any:
    """params with the layer kernels and an untied head ("head", 2-D) as PanelKernels, when the
    CPU decode kernel is available; otherwise params unchanged."""
    if not isinstance(params, dict) or not panel_matmul.available():
        return params
    out = dict(params)
    head = params.get("head")
    if _packable(head) and head.ndim == 2:
        out["head"] = panel_matmul.pack(head, 1)
    blocks = params.get("blocks")
    if isinstance(blocks, dict) and all(isinstance(k, int) for k in blocks):

        def pack(path, leaf):
            keys = tuple(getattr(p, "key", None) for p in path)  # (layer, group, name, "kernel")
            n_in = LAYER_KERNELS.get(keys[1:3]) if len(keys) == 4 and keys[3] == "kernel" else None
            if n_in is None or not _packable(leaf) or leaf.ndim <= n_in:
                return leaf
            return panel_matmul.pack(leaf, n_in)

        out["blocks"] = jax.tree_util.tree_map_with_path(pack, blocks)
    return out

