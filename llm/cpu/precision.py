"""What `precision.compute=auto` means on a CPU: bf16 where this CPU's bf16 matmul beats f32.

On CPUs with a bf16 matrix engine (AMX, AVX-512 BF16) XLA's f32-accumulating bf16 dot
(`jnp.dot(bf16, bf16, preferred_element_type=float32)`) can be several times faster than an f32
dot; elsewhere bf16 only costs conversions. Which one holds is measured once per machine (a
training-shaped matmul in each precision, well under a second) and kept as a small JSON in the
kernel cache (llm.cpu.build.cache_dir()), keyed on the CPU model, its flags and the jax/jaxlib
versions, so later processes only read it. A CPU whose flags list no bf16 engine gets f32 without
measuring; a multi-process run decides from the flags alone (AMX: bf16), so that every process
of the job agrees.

$LLM_CPU_BF16=1 / 0 forces bf16 / f32 without measuring (the test suite sets 0: its tolerances
against Hugging Face and float64 references are f32's).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import jaxlib.version

from llm.cpu.build import cache_dir
from llm.cpu.features import AMX, bf16_engine, cpu_flags, cpu_model

ENV = "LLM_CPU_BF16"
# The shape of a training matmul of the `small` config (tokens x d_model @ d_model x d_ff).
SHAPE = (2048, 512, 1536)
# bf16 is chosen only when its matmul is at least this much faster: a machine where both run at
# the same speed must not flip to bf16 on timing noise.
MIN_SPEEDUP = 1.25


@dataclasses.dataclass(frozen=True)
class Choice:
    bf16: bool
    reason: str  # why, for the start-up log line


def choose(f32_s: float, bf16_s: float, min_speedup: float = MIN_SPEEDUP) -> bool:
    """bf16 when its matmul time beats f32's by at least `min_speedup`."""
    return bf16_s > 0 and f32_s / bf16_s >= min_speedup


def time_matmuls(shape: tuple[int, int, int] = SHAPE, repeats: int = 5, clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """(f32 seconds, bf16 seconds): best of `repeats` of each dot on the CPU, alternating between
    the two so that load from other processes hits both alike. The bf16 dot accumulates in f32,
    the phrasing XLA:CPU runs on the bf16 engine."""
    m, k, n = shape
    with jax.default_device(jax.devices("cpu")[0]):
        a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
        dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
        inputs = {"f32": (a, b), "bf16": (a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))}
        for x, y in inputs.values():
            dot(x, y).block_until_ready()  # compile
        best = {name: float("inf") for name in inputs}
        for _ in range(repeats):
            for name, (x, y) in inputs.items():
                start = clock()
                dot(x, y).block_until_ready()
                best[name] = min(best[name], clock() - start)
    return best["f32"], best["bf16"]


def machine_key(model: str, flags: frozenset[str]) -> str:
    """What the decision depends on: the CPU model, its flags and the jax/jaxlib versions."""
    text = "\n".join((model, " ".join(sorted(flags)), jax.__version__, jaxlib.version.__version__))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_file(key: str, directory: Path | None = None) -> Path:
    return (directory or cache_dir()) / f"cpu-precision-{key}.json"


def measured_choice(path: Path, measure: Callable[[], tuple[float, float]] = time_matmuls) -> Choice:
    """The choice recorded at `path`, or measured now and written there (atomically; a cache
    that cannot be written only costs a measurement next time)."""
    try:
        record = json.loads(path.read_text())
        f32_s, bf16_s = float(record["f32_s"]), float(record["bf16_s"])
        source = f"measured once, cached in {path}"
    except (OSError, ValueError, KeyError, TypeError):
        f32_s, bf16_s = measure()
        source = "measured now"
        record = {"f32_s": f32_s, "bf16_s": bf16_s, "shape": list(SHAPE), "model": cpu_model(),
                  "jax": jax.__version__, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".json", delete=False) as tmp:
                json.dump(record, tmp)
            os.replace(tmp.name, path)
        except OSError:
            pass
    bf16 = choose(f32_s, bf16_s)
    ratio = f32_s / bf16_s if bf16_s > 0 else 0.0
    return Choice(bf16, f"bf16 matmul {ratio:.2f}x f32's on this CPU ({source}; bf16 from {MIN_SPEEDUP}x)")


def decide(env: str | None, engine: str | None, processes: int, measure: Callable[[], Choice]) -> Choice:
    """The decision, in order: the $LLM_CPU_BF16 override, no bf16 engine (f32), a multi-process
    job (AMX: bf16, by the flags), else the measurement."""
    if env is not None and env.strip() != "":
        if env.strip() not in ("0", "1"):
            raise ValueError(f"{ENV} must be 0 (f32) or 1 (bf16), not {env!r}")
        return Choice(env.strip() == "1", f"{ENV}={env.strip()}")
    if engine is None:
        return Choice(False, "no bf16 matrix engine in the CPU flags")
    if processes > 1:
        return Choice(engine == AMX, f"{engine} in the CPU flags ({processes} processes: decided by flags, not timing)")
    return measure()


def cpu_compute_choice() -> Choice:
    """Whether `auto` compute on this CPU is bf16, and why: the $LLM_CPU_BF16 override as set
    now, else this machine's decision (made once per process)."""
    env = os.environ.get(ENV)
    if env is not None and env.strip() != "":
        return decide(env, None, 1, _machine_choice)
    return _machine_choice()


@functools.lru_cache(maxsize=None)
def _machine_choice() -> Choice:
    flags = cpu_flags()
    return decide(
        None, bf16_engine(flags), jax.process_count(),
        lambda: measured_choice(cache_file(machine_key(cpu_model(), flags))),
    )


def cpu_auto_compute_dtype() -> jnp.dtype:
    """The compute dtype `precision.compute=auto` resolves to on a CPU."""
    return jnp.bfloat16 if cpu_compute_choice().bf16 else jnp.float32
