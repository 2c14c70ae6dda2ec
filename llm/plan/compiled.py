"""Per-device memory from a real compile of the step: libtpu for TPU slices (llm compile's
path, no TPU needed), XLA:CPU for this machine. None where no compiler is at hand."""

from __future__ import annotations

import importlib.metadata

import ml_collections

from llm.errors import UserError
from llm.plan.hardware import Hardware
from llm.plan.memory import Memory


def compiler_name(hw: Hardware) -> str:
    if hw.kind == "tpu":
        try:
            return f"libtpu {importlib.metadata.version('libtpu')}"
        except importlib.metadata.PackageNotFoundError:
            return "libtpu (not installed)"
    import jax

    return f"xla cpu (jax {jax.__version__})"


def compiled_memory(config: ml_collections.ConfigDict, hw: Hardware, overrides: tuple[str, ...] = ()) -> tuple[Memory | None, str]:
    """(memory, note): the compiler's figures for `config` + `overrides` on `hw`, or None and why not."""
    import jax

    from llm.compile.report import evaluate

    if hw.kind == "tpu":
        from llm.compile.aot import topology_devices

        try:
            devices = topology_devices(hw.topology)
        except UserError:
            return None, "libtpu is not installed (pip install -e '.[tpu]')"
    elif hw.kind == "cpu":
        devices = jax.devices("cpu")[:1]
    else:
        return None, f"no {hw.chip} compiler on this machine"
    c = evaluate(config, devices, hw.hbm_bytes, overrides).compilation
    if c.total_bytes is None:
        return None, f"the compiler refused without a figure: {c.error[:120]}"
    source = f"compiled ({compiler_name(hw)})" + (", out of memory: its figure" if c.out_of_memory else "")
    return Memory(c.params_bytes, c.frozen_bytes, c.opt_state_bytes, None, c.temp_bytes or 0, source, c.batch_bytes, c.total_bytes,
                  c.host_opt_state_bytes), ""
