"""Test-wide setup: 8 simulated CPU devices (set before jax is imported), CPU platform only.

Single-device tests pick `jax.devices()[:1]` explicitly; subprocesses inherit the environment.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["LLM_CPU_BF16"] = "0"  # `auto` compute is f32 on every CPU (tolerances are f32's); tests opt in by monkeypatch

from llm.cpu.runtime import configure_host_runtime  # noqa: E402  (after the environment above)

configure_host_runtime()  # as the `llm` CLI does: freed memory kept, sync dispatch (llm.cpu.runtime)
