"""The generator's own copy of the weights, laid out for decoding on CPU.

Every Dense kernel (found from the model's layers) and an untied LM head are held pre-packed
for the CPU decode kernel (llm.generate.panel_matmul.PanelKernel), which multiplies the batch's few rows by them at close
to the machine's bandwidth where XLA's dots repack the weights on every call. Each output column
is still one f32 dot product over the same inputs, so results agree with XLA's dots to rounding.

A model that computes in bf16 (precision.compute=bfloat16) holds its kernels in bf16 panels
for the bf16 kernel (llm.generate.panel_bf16.Bf16PanelKernel: AMX or AVX-512 BF16, f32
accumulation, half the bytes per step) on CPUs with such an engine; elsewhere its kernels stay
plain and XLA's bf16 dots multiply them. f32 models stay f32.

Packed only where a kernel applies: on CPU with the kernel built, for kernels of a model whose
layers are a list (a scanned stack, kernels that are not plain arrays, e.g. quantized ones, and
sharded params are returned as they are). The route is logged once per generator.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llm.generate import panel_bf16, panel_matmul
from llm.model.layers import kernel_input_dims
from llm.pytree import key_name, path_str


log = logging.getLogger("llm")


def _packable(leaf: Any, dtypes: tuple) -> bool:
    return isinstance(leaf, jax.Array) and leaf.dtype in dtypes and len(leaf.sharding.device_set) == 1


def decode_route(compute_dtype) -> str:
    """Which matmuls a CPU decode of a model computing in `compute_dtype` runs: "amx" or
    "avx512_bf16" (the bf16 panel kernel), "f32 kernel" (the f32 panel kernel) or "XLA"."""
    if not panel_matmul.available():
        return "XLA"
    if jnp.dtype(compute_dtype) == jnp.float32:
        return "f32 kernel"
    if jnp.dtype(compute_dtype) == jnp.bfloat16:
        return panel_bf16.engine() or "XLA"
    return "XLA"


def pack_kernels(model: nnx.Module, params: Any) -> Any:
    """params (model's, as a pure dict) with every Dense kernel and an untied head ("head",
    2-D) packed for the decode route of the model's compute dtype (decode_route: f32
    PanelKernels, or Bf16PanelKernels for a bf16 model on a CPU with a bf16 engine); params
    unchanged where the route is XLA. The kernels and their input dims come from the model's
    Dense layers."""
    route = decode_route(model.spec.compute_dtype)
    scanned = bool(model.spec.scan_layers)
    log.info("CPU decode matmuls: %s%s", route, " (LM head only: the scanned layers use XLA's dots)" if scanned and route != "XLA" else "")
    if not isinstance(params, dict) or route == "XLA":
        return params
    if route == "f32 kernel":
        packer, dtypes = panel_matmul.pack, (jnp.float32,)
    else:
        packer, dtypes = panel_bf16.pack_bf16, (jnp.bfloat16, jnp.float32)
    n_ins = {path_str(path): n for path, n in kernel_input_dims(model).items()}

    def pack(path, leaf):
        n_in = n_ins.get(path_str(path))
        if n_in is None or (scanned and key_name(path[0]) == "blocks") or not _packable(leaf, dtypes):
            return leaf
        return packer(leaf, n_in)

    out = jax.tree_util.tree_map_with_path(pack, params)
    head = params.get("head")
    if _packable(head, dtypes) and head.ndim == 2:
        out["head"] = packer(head, 1)
    return out
