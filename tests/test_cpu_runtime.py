"""llm.cpu.runtime: with its settings an XLA:CPU computation stops page-faulting its
temporaries back in on every call."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llm.cpu.runtime import configure_host_runtime, keep_freed_memory

_FAULTS = r"""
import json, resource, sys
from llm.cpu.runtime import configure_host_runtime
applied = configure_host_runtime() if sys.argv[1] == "on" else []
import jax, jax.numpy as jnp

@jax.jit
def f(x):  # a 64 MiB temporary: the dot's operand
    y = jnp.sin(jnp.outer(x, x))
    return jnp.dot(y, x).sum()

x = jnp.arange(4096, dtype=jnp.float32)
for _ in range(3):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_settings_stop_per_call_page_faults():
    assert keep_freed_memory()
    default, kept = _faults("off"), _faults("on")
    assert kept["applied"] == ["glibc keeps freed memory", "XLA:CPU sync dispatch"]
    assert default["faults"] > 4000, default  # the 64 MiB temporary faulted back in (16k pages)
    assert kept["faults"] < default["faults"] / 10, (default, kept)


def test_opt_out_leaves_the_defaults():
    assert configure_host_runtime({"LLM_CPU_KEEP_MEMORY": "0"}) == []
