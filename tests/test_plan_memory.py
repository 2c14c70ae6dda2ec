"""llm plan's memory: the state bytes on an abstract mesh are exactly the run's, and the analytic
model agrees with libtpu's compile of llama3_8b full and LoRA on v5p-64 and v5e-8 within 20%
(against XLA:CPU: tests/test_plan_validate.py)."""

from __future__ import annotations

import jax
import pytest

from llm.compile.aot import abstract_setup, per_device_bytes
from llm.config.loading import load_config
from llm.finetune.tasks import partition_for_config
from llm.plan.compiled import compiled_memory
from llm.plan.hardware import parse_hardware
from llm.plan.memory import analytic_memory
from llm.plan.state import abstract_state
from tests.test_compile_aot import require_libtpu

LORA = ["peft.lora_rank=8", "peft.lora_targets=all_linear"]


@pytest.mark.parametrize("overrides", [[], LORA, [*LORA, "peft.quantize=nf4", "model.d_ff=512"]])
def test_abstract_state_bytes_are_the_runs(overrides):
    """Against llm.compile.aot.abstract_setup on 8 real (CPU) devices, mesh fsdp 2 x tensor 2 x data 2."""
    config = load_config("configs/tiny.py", ["mesh.fsdp=2", "mesh.tensor=2", "model.d_model=256", *overrides])
    partition = partition_for_config(config) if overrides else None
    real = abstract_setup(config, jax.devices()[:8], partition)
    state = abstract_state(config, 8, "cpu")
    assert state.bytes() == {
        "params": per_device_bytes(real.state.params),
        "frozen": per_device_bytes(real.frozen),
        "optimizer": per_device_bytes(real.state.opt_state),
    }


@pytest.mark.slow  # four libtpu compiles of an 8B step: ~5 s each on v5e-8 (out of memory), ~40-55 s on v5p-64
@pytest.mark.parametrize("name", ["sft_full_llama3_8b", "sft_lora_llama3_8b"])
@pytest.mark.parametrize("hardware", ["v5e-8", "v5p-64"])
def test_analytic_memory_agrees_with_libtpu_for_llama3_8b(name, hardware):
    require_libtpu()
    config = load_config(f"configs/{name}.py")
    hw = parse_hardware(hardware)
    compiled, why = compiled_memory(config, hw)
    assert compiled is not None, why
    analytic = analytic_memory(config, abstract_state(config, hw.chips, "tpu"), "tpu")
    assert (analytic.params, analytic.frozen, analytic.optimizer) == (compiled.params, compiled.frozen, compiled.optimizer)
    assert abs(analytic.total / compiled.total - 1) <= 0.20, (analytic.total / 2**30, compiled.total / 2**30)
