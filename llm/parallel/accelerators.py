"""Dense bf16 peak FLOP/s and HBM bandwidth per chip, by the device kind JAX reports: the one
table that MFU (`llm train`, `llm bench`), `llm compile`'s step-time estimate and the decode
roofline (`llm bench generate`) are measured against."""

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


# (lower-cased substring of device_kind, HBM bytes/s): the vendors' data-sheet figures (H100 SXM
# 3.35 TB/s, H200 4.8 TB/s, A100 80GB SXM 2.039 TB/s; TPU v5e 819 GB/s, v5p 2,765 GB/s, v6e 1,640 GB/s).
HBM_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("h100", 3.35e12),
    ("h200", 4.8e12),
    ("a100", 2.039e12),
    ("tpu v5 lite", 819e9),
    ("tpu v5e", 819e9),
    ("tpu v5p", 2765e9),
    ("tpu v5", 2765e9),
    ("tpu v6 lite", 1640e9),
    ("tpu v6e", 1640e9),
)


def hbm_bandwidth(device_kind: str) -> float | None:
    """The data sheet's memory bandwidth for a device kind, None if unknown (a CPU)."""
    kind = device_kind.lower()
    return next((bw for name, bw in HBM_BANDWIDTH if name in kind), None)
