"""llm.compile.aot: the abstract run is the real run (same lowered train step as
llm.train.setup.build_setup, and as build_partitioned_setup for LoRA / QLoRA / freezing /
classification), per-device bytes follow the shardings, and the TPU compiler (libtpu, no TPU)
compiles tiny for a v5e-8 with memory and FLOPs that add up, its LoRA step with optimizer
state for the adapters only."""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm.compile.aot import abstract_setup, compile_step, parse_oom_bytes, per_device_bytes, topology_devices
from llm.config.loading import load_config
from llm.finetune.tasks import partition_for_config
from llm.model.spec import param_count
from llm.parallel.topology import parse_topology
from llm.peft.spec import leaf_paths
from llm.train.flops import flops_per_token, partitioned_flops_per_token
from llm.train.setup import build_partitioned_setup, build_setup


def require_libtpu():
    if importlib.util.find_spec("libtpu") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install the tpu extra (libtpu) for the llm compile tests")
        pytest.skip("libtpu is not installed: pip install -e '.[tpu]'")


@pytest.mark.slow
def test_abstract_setup_lowers_to_the_same_step_as_build_setup():
    config = load_config("configs/tiny.py", ["mesh.fsdp=2", "mesh.tensor=2", "train.grad_accum=2"])
    abstract = abstract_setup(config, jax.devices())
    setup, state = build_setup(config)
    batch = setup.shard_batch({k: np.zeros(s.shape, s.dtype) for k, s in abstract.batch.items()})
    real = setup.train_step.lower(state, batch, {}).as_text()
    assert abstract.train_step.lower(abstract.state, abstract.batch, {}).as_text() == real
    assert jax.tree_util.tree_map(lambda x: x.sharding, abstract.state) == setup.state_shardings


def test_per_device_bytes_follow_shardings():
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    tree = {
        "split": jax.ShapeDtypeStruct((8, 6), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec("a", "b"))),
        "replicated": jax.ShapeDtypeStruct((10,), jnp.bfloat16, sharding=NamedSharding(mesh, PartitionSpec())),
    }
    assert per_device_bytes(tree) == (2 * 3) * 4 + 10 * 2


def test_parse_oom_message():
    message = "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (148.79G) exceeds available HBM (95.74G)."
    assert parse_oom_bytes(message) == int(148.79 * 2**30)
    assert parse_oom_bytes("memory required for HLO temporaries (512.5M) exceeds") == int(512.5 * 2**20)
    assert parse_oom_bytes("something else") is None


@pytest.mark.parametrize("name, kind", [("v5e-8", "TPU v5 lite"), ("v5p-64", "TPU v5"), ("v6e-16", "TPU v6 lite")])
def test_topology_devices(name, kind):
    require_libtpu()
    topology = parse_topology(name)
    devices = topology_devices(topology)
    assert len(devices) == topology.chips
    assert {d.device_kind for d in devices} == {kind} and devices[0].platform == "tpu"


@pytest.mark.slow
def test_tiny_compiles_for_v5e_8_with_consistent_memory_and_flops():
    require_libtpu()
    config = load_config("configs/tiny.py", ["mesh.data=2", "mesh.fsdp=4"])
    setup = abstract_setup(config, topology_devices(parse_topology("v5e-8")))
    assert setup.spec.compute_dtype == jnp.bfloat16  # "auto" precision is bf16 on TPU
    result = compile_step(setup)
    assert not result.out_of_memory
    n = param_count(setup.spec)
    # f32 parameters, sharded 4 ways on embed (fsdp) where they have an embed axis; AdamW keeps two moments.
    assert n * 4 / 4 <= result.params_bytes <= n * 4 / 2
    assert result.opt_state_bytes >= 2 * result.params_bytes
    assert result.total_bytes >= result.params_bytes + result.opt_state_bytes + result.temp_bytes
    assert result.total_bytes < 64 * 2**20
    model_flops = flops_per_token(setup.spec, config.data.seq_len) * config.data.batch_size * config.data.seq_len
    # No scan and no accumulation: XLA's count covers the whole step (plus the optimizer and the
    # full attention square) and lands close to the analytic model FLOPs.
    ratio = result.hlo_flops_per_device * 8 / model_flops
    assert 0.95 < ratio < 1.5, ratio
    assert "ENTRY" in result.hlo_text and "all-gather" in result.hlo_text


def shardings(tree):
    return jax.tree_util.tree_map(lambda x: x.sharding, tree)


@pytest.mark.slow
@pytest.mark.parametrize("path, overrides", [
    ("configs/sft_lora_tiny.py", []),
    ("configs/sft_qlora_tiny.py", []),
    ("configs/sft_frozen_tiny.py", []),
    ("configs/classify_tiny.py", ["finetune.num_labels=5", "peft.lora_rank=4"]),
])
def test_abstract_partitioned_setup_lowers_to_the_same_step_as_fine_tuning(path, overrides):
    """The partition llm sft / llm classify builds, applied to abstract params, is the real one."""
    config = load_config(path, ["mesh.fsdp=2", "mesh.tensor=2", "data.seq_len=64", *overrides])
    abstract = abstract_setup(config, jax.devices(), partition_for_config(config))
    setup, state, frozen = build_partitioned_setup(config, partition_for_config(config))
    batch = setup.shard_batch({k: np.zeros(s.shape, s.dtype) for k, s in abstract.batch.items()})
    real = setup.train_step.lower(state, batch, frozen).as_text()
    assert abstract.train_step.lower(abstract.state, abstract.batch, abstract.frozen).as_text() == real
    assert shardings(abstract.state) == setup.state_shardings
    assert shardings(abstract.frozen) == shardings(frozen)


@pytest.mark.slow
def test_lora_compiles_for_v5e_8_with_a_frozen_base_and_adapter_only_optimizer_state():
    require_libtpu()
    devices = topology_devices(parse_topology("v5e-8"))
    overrides = ["mesh.fsdp=2", "peft.lora_rank=2"]
    full = compile_step(abstract_setup(load_config("configs/sft_full_tiny.py", overrides), devices))
    config = load_config("configs/sft_lora_tiny.py", overrides)
    setup = abstract_setup(config, devices, partition_for_config(config))
    lora = compile_step(setup)
    assert not lora.out_of_memory and not full.out_of_memory
    # The whole base is an argument of its own, as large as the full step's trained params.
    assert lora.frozen_bytes == full.params_bytes and full.frozen_bytes == 0
    assert {"embed", "head", "blocks/0/attn/q/kernel", "blocks/1/mlp/down/kernel"} <= set(leaf_paths(setup.frozen))
    assert all(p.endswith(("/lora_a", "/lora_b")) for p in leaf_paths(setup.state.params))
    # AdamW's two moments for the adapters only (plus a few scalar counters).
    assert 2 * lora.params_bytes <= lora.opt_state_bytes < 2 * lora.params_bytes + 1024
    assert lora.opt_state_bytes < full.opt_state_bytes / 20
    # No weight-gradient matmuls for the frozen kernels: XLA counts fewer FLOPs, close to the formula.
    assert lora.hlo_flops_per_device < 0.85 * full.hlo_flops_per_device
    tokens = config.data.batch_size * config.data.seq_len
    model_flops = partitioned_flops_per_token(setup.spec, config.data.seq_len, setup.state.params, setup.frozen) * tokens
    assert model_flops < 0.85 * flops_per_token(setup.spec, config.data.seq_len) * tokens
    ratio = lora.hlo_flops_per_device * 8 / model_flops
    assert 0.95 < ratio < 1.5, ratio
