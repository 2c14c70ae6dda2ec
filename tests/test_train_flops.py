"""llm.train.flops.device_peak_flops: accelerators are looked up in llm.parallel.accelerators by
the device kind JAX reports (the order matters: a v5e says "TPU v5 lite", a v5p "TPU v5")."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from llm.train.flops import device_peak_flops


@pytest.mark.parametrize(
    "kind, peak",
    [("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12), ("NVIDIA H100 80GB HBM3", 989e12),
     ("NVIDIA H200", 989e12), ("Tesla T4", 0.0)],
)
def test_accelerator_peaks_by_device_kind(kind, peak):
    value, source = device_peak_flops(SimpleNamespace(platform="tpu" if "TPU" in kind else "gpu", device_kind=kind))
    assert value == peak
    assert ("table peak" in source) == (peak > 0) and kind in source
