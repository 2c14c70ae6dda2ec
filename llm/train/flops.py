"""Model FLOPs and the peak they are measured against (the formula in DESIGN.md); accelerator
peaks come from llm.parallel.accelerators, CPU peaks are measured."""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp

from llm.model.spec import ModelSpec, non_embedding_params
from llm.parallel.accelerators import peak_flops
from llm.pytree import path_keys


def flops_per_token(spec: ModelSpec, seq_len: int) -> float:
    """Training FLOPs per token: 6 N_nonembed + 6 d V (LM head) + 12 L d T (attention, full
    causal square, i.e. not halved for causality)."""
    return (
        6 * non_embedding_params(spec)
        + 6 * spec.d_model * spec.vocab_size
        + 12 * spec.n_layers * spec.d_model * seq_len
    )


def _has_shape(x: Any) -> bool:
    """Arrays, ShapeDtypeStructs and quantized tensors (counted by their logical shape)."""
    return hasattr(x, "shape") and not isinstance(x, dict)


def partitioned_flops_per_token(spec: ModelSpec, seq_len: int, trainable: Any, frozen: Any, lm_head: bool = True) -> float:
    """Training FLOPs per token when only `trainable` is trained (LoRA, frozen layers), by the
    terms of flops_per_token: the forward pass costs 2 per parameter, input gradients 2 per
    parameter only from the lowest layer that holds a trainable leaf upward (nothing below needs
    them), weight gradients 2 per trainable parameter (adapters included, frozen ones none);
    attention 4 d T forward and 8 d T backward per layer that gradients reach. A layer with a
    trainable leaf counts whole, whatever the order inside it. With everything trainable this
    equals flops_per_token. `lm_head=False`: a task that never computes the LM logits
    (classification; its head acts once per sequence and is left out).
    """
    n, d = spec.n_layers, spec.d_model
    head = n + 1  # groups: 0..n-1 layers, n the final norm, n + 1 the LM head
    forward, weight_grads = [0.0] * (n + 2), [0.0] * (n + 2)
    lowest = n + 2  # the lowest group with a trainable leaf (-1: the embeddings)
    if lm_head:
        forward[head] = 2.0 * d * spec.vocab_size
    for is_trained, tree in ((True, trainable), (False, frozen)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree, is_leaf=_has_shape):
            keys = path_keys(path)
            size = float(math.prod(leaf.shape))
            if keys[0] in ("embed", "pos_embed", "head"):
                tied_head = keys[0] == "embed" and spec.tie_embeddings
                if is_trained:
                    lowest = min(lowest, head if keys[0] == "head" else -1)
                    if lm_head and (keys[0] == "head" or tied_head):
                        weight_grads[head] = forward[head]
                continue
            if keys[0] == "blocks":  # blocks/i/... or, scanned, blocks/... with a leading layer axis
                per_layer = {keys[1]: size} if isinstance(keys[1], int) else {i: size / n for i in range(n)}
            elif keys[0] == "final_norm":
                per_layer = {n: size}
            else:
                continue  # a task head that acts once per sequence
            for group, count in per_layer.items():
                forward[group] += 2 * count
                if is_trained:
                    weight_grads[group] += 2 * count
                    lowest = min(lowest, group)
    total = sum(forward) + sum(weight_grads)
    for group in range(n + 2):
        if group >= lowest and (group != head or lowest < head):
            total += forward[group]  # input gradients cost what the forward pass costs
        if group < n:
            total += 4 * d * seq_len * (3 if group >= lowest else 1)
    return total


def matmul_f32_accumulate(x: jax.Array, y: jax.Array) -> jax.Array:
    """x @ y with an f32 result (for bf16 inputs: the bf16 engines' phrasing)."""
    return jnp.dot(x, y, preferred_element_type=jnp.float32)


def measure_matmul_peak(dtype=jnp.float32, size: int = 2048, repeats: int = 5, clock=time.perf_counter) -> float:
    """FLOP/s of a large square matmul on the default device, best of `repeats`, timed by
    `clock` (time.process_time gives FLOP/s per CPU-second: llm.plan.cpu). The product
    accumulates in f32 whatever `dtype` is: that is how the model's matmuls are phrased and
    what bf16 matrix engines run (on XLA:CPU a bf16 dot with a bf16 result is upcast to f32 and
    runs at f32 speed, so it would not measure the bf16 peak)."""
    a = jnp.ones((size, size), dtype)
    b = jnp.ones((size, size), dtype)
    matmul = jax.jit(matmul_f32_accumulate)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        matmul(a, b).block_until_ready()
        best = min(best, clock() - start)
    return 2 * size**3 / best


def device_peak_flops(device: jax.Device | None = None, measure_cpu: bool = True) -> tuple[float, str]:
    """(peak FLOP/s per device, where it came from). CPUs are measured, accelerators looked up.
    A CPU's peak is the faster of its f32 and bf16 (f32-accumulating) matmuls, whatever the
    compute dtype, as an accelerator's table peak is its dense bf16 rate: MFU is the share of
    what the machine can do."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        if not measure_cpu:
            return 0.0, "cpu (not measured)"
        f32 = measure_matmul_peak(jnp.float32)
        bf16 = measure_matmul_peak(jnp.bfloat16)
        return max(f32, bf16), f"cpu matmul peak measured (f32 {f32 / 1e9:.0f}, bf16 {bf16 / 1e9:.0f} GFLOP/s)"
    peak = peak_flops(device.device_kind)
    if peak is not None:
        return peak, f"{device.device_kind} table peak"
    return 0.0, f"{device.device_kind}: no peak known, MFU not reported"
