"""Model FLOPs and the peak they are measured against (the formula in DESIGN.md)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from llm.model.spec import ModelSpec, non_embedding_params

# Dense bf16 peaks per chip, FLOP/s.
ACCELERATOR_PEAKS = {
    "h100": 989e12,
    "h200": 989e12,
    "tpu v5 lite": 197e12,  # v5e
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,  # v6e
    "tpu v6e": 918e12,
}


def flops_per_token(spec: ModelSpec, seq_len: int) -> float:
    """Training FLOPs per token: 6 N_nonembed + 6 d V (LM head) + 12 L d T (attention, full
    causal square, i.e. not halved for causality)."""
    return (
        6 * non_embedding_params(spec)
        + 6 * spec.d_model * spec.vocab_size
        + 12 * spec.n_layers * spec.d_model * seq_len
    )


def measure_matmul_peak(dtype=jnp.float32, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul on the default device, best of `repeats`."""
    a = jnp.ones((size, size), dtype)
    b = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def device_peak_flops(device: jax.Device | None = None, measure_cpu: bool = True) -> tuple[float, str]:
    """(peak FLOP/s per device, where it came from). CPUs are measured, accelerators looked up."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        if not measure_cpu:
            return 0.0, "cpu (not measured)"
        f32 = measure_matmul_peak(jnp.float32)
        bf16 = measure_matmul_peak(jnp.bfloat16)
        return max(f32, bf16), f"cpu matmul peak measured (f32 {f32 / 1e9:.0f}, bf16 {bf16 / 1e9:.0f} GFLOP/s)"
    kind = device.device_kind.lower()
    for name, peak in ACCELERATOR_PEAKS.items():
        if name in kind:
            return peak, f"{device.device_kind} table peak"
    return 0.0, f"{device.device_kind}: no peak known, MFU not reported"
