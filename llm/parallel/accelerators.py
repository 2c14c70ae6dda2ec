"""Dense bf16 peak FLOP/s per chip, by the device kind JAX reports: the one table that MFU
(`llm train`, `llm bench`) and `llm compile`'s step-time estimate are measured against."""

from __future__ import annotations

# (lower-cased substring of jax.Device.device_kind, FLOP/s). The first match wins, so "tpu v5 lite"
# (what a v5e reports) comes before "tpu v5" (what a v5p reports).
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100", 989e12),
    ("h200", 989e12),
    ("a100", 312e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p
    ("tpu v6 lite", 918e12),  # v6e
    ("tpu v6e", 918e12),
)


def peak_flops(device_kind: str) -> float | None:
    """The table's peak for a device kind ("TPU v5 lite", "NVIDIA H100 80GB HBM3"), None if unknown."""
    kind = device_kind.lower()
    return next((peak for name, peak in PEAK_FLOPS if name in kind), None)
