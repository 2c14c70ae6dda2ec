"""Ahead-of-time compilation of the real train step for a TPU slice, on a machine without one.

The run is assembled exactly as `llm.train.setup.build_setup` assembles it (same mesh, rules,
model, optimizer, loss, `make_train_step` and jit shardings), but from abstract arrays: nothing
is allocated, so an 8B model "fits" on a laptop. A fine-tuning run is assembled as
`build_partitioned_setup` does: the same `Partition` (adapters, quantized or frozen base, task
head and loss) applied to the abstract base, so the frozen part is a separate, non-donated
argument with no optimizer state. Lowered against compile-only TPU devices from libtpu's
topology description, XLA's TPU compiler reports the per-device memory the step needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm.compile.analysis import compiled_figures
from llm.data.batch import abstract_batch
from llm.finetune.tasks import extra_batch_keys
from llm.errors import UserError
from llm.model.build import abstract_model, param_shardings
from llm.model.spec import ModelSpec, model_spec
from llm.parallel.plan import count_tpu_chips
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules
from llm.parallel.topology import TpuTopology
from llm.pytree import with_shardings
from llm.train.loss import lm_loss_fn
from llm.train.optimizer import build_optimizer
from llm.train.partition import Partition
from llm.train.setup import HOST_MEMORY, check_batch, jit_train_step, opt_state_shardings
from llm.train.step import TrainState


@dataclasses.dataclass(frozen=True)
class AbstractSetup:
    """A run's pieces with ShapeDtypeStructs (carrying shardings) in place of arrays."""

    mesh: Mesh
    rules: AxisRules
    spec: ModelSpec
    state: TrainState  # params: the trainable ones (all of them without a partition)
    batch: dict[str, jax.ShapeDtypeStruct]
    train_step: Callable  # jitted like build_setup's: (state, batch, frozen) -> (state, metrics)
    frozen: Any = dataclasses.field(default_factory=dict)  # the partition's frozen part ({} without one)


def abstract_setup(config: ml_collections.ConfigDict, devices: list, partition: Partition | None = None) -> AbstractSetup:
    """Mirror of build_setup (build_partitioned_setup with a partition) with abstract state,
    frozen part and batch (see the module docstring)."""
    mesh = build_mesh(config.mesh, devices)
    rules = AxisRules.from_config(config.mesh.rules, mesh)
    check_batch(config, mesh, rules)
    spec = model_spec(config, vocab_shards=rules.shards("vocab"), platform=mesh.devices.flat[0].platform)
    graphdef, abstract = abstract_model(spec, rules, config.train.seed)
    params = with_shardings(abstract.to_pure_dict(), param_shardings(abstract, spec, rules))
    frozen: Any = {}
    loss_fn = lm_loss_fn(graphdef, config.train.z_loss)
    if partition is not None:
        graphdef, params, frozen = partition.apply(graphdef, params)
        loss_fn = partition.loss_fn(graphdef)
    p_shardings = jax.tree_util.tree_map(lambda x: x.sharding, params)
    optimizer, schedule = build_optimizer(config.optim, config.train.steps, config.precision.optimizer_state)
    replicated = NamedSharding(mesh, PartitionSpec())
    o_shardings = opt_state_shardings(optimizer, params, p_shardings, replicated, config.optim.offload_state)
    opt_state = with_shardings(jax.eval_shape(optimizer.init, params), o_shardings)
    state = TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params, opt_state)
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    batch_sharding = rules.sharding(("batch", "length"))
    batch = abstract_batch(config.data.batch_size, config.data.seq_len, batch_sharding, extra_batch_keys(config))
    train_step = jit_train_step(config, loss_fn, optimizer, schedule, state_shardings, batch_sharding)
    return AbstractSetup(mesh, rules, spec, state, batch, train_step, frozen)


def per_device_bytes(tree: Any, memory_kind: str = "device") -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard) in its
    own memory, or with memory_kind="pinned_host" in the host memory beside it."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        kind = getattr(leaf.sharding, "memory_kind", None) or "device"
        if (kind == HOST_MEMORY) != (memory_kind == HOST_MEMORY):
            continue
        shard = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total


@dataclasses.dataclass(frozen=True)
class StepCompilation:
    """What the TPU compiler said about one configuration (bytes are per device)."""

    params_bytes: int  # the trained parameters (every parameter without a fine-tuning partition)
    opt_state_bytes: int
    batch_bytes: int
    temp_bytes: int | None  # activations, gradients, collective buffers, workspace
    total_bytes: int | None  # arguments + outputs - donated aliases + temporaries
    compiler_peak_bytes: int | None  # the compiler's own peak estimate, where it gives one
    hlo_flops_per_device: float | None  # XLA's count; loop bodies (scanned layers) are counted once
    hlo_text: str  # the optimized HLO when it compiled, else the pre-optimization StableHLO
    out_of_memory: bool  # the compiler refused: some memory (HBM, or on-chip VMEM) ran out
    error: str = ""  # the compiler's reason when it refused
    frozen_bytes: int = 0  # a fine-tuning partition's frozen part (params_bytes: the trainable part)
    host_opt_state_bytes: int = 0  # optim.offload_state: the moments in host memory (not in the totals)


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_oom_bytes(message: str) -> int | None:
    """`... HLO temporaries (148.79G) exceeds available HBM ...` -> bytes."""
    match = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT]?)\)", message)
    if not match:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def compile_step(setup: AbstractSetup) -> StepCompilation:
    """Lower and compile the step; an out-of-HBM refusal becomes a result, not an exception."""
    params_bytes = per_device_bytes(setup.state.params)
    opt_bytes = per_device_bytes(setup.state.opt_state)
    host_bytes = per_device_bytes(setup.state.opt_state, HOST_MEMORY)
    batch_bytes = per_device_bytes(setup.batch)
    frozen_bytes = per_device_bytes(setup.frozen)
    lowered = setup.train_step.lower(setup.state, setup.batch, setup.frozen)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as err:
        message = str(err)
        if "RESOURCE_EXHAUSTED" not in message:
            raise
        temp = parse_oom_bytes(message)
        total = None if temp is None else frozen_bytes + params_bytes + opt_bytes + batch_bytes + temp
        # "E1001: CompileTimeScopedVmemOom:" names the error, the next line says what ran out.
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        reason = " ".join(lines[:1] if temp is not None else lines[:2])[:300]
        return StepCompilation(
            params_bytes, opt_bytes, batch_bytes, temp, total, None, None, lowered.as_text(), True, reason, frozen_bytes, host_bytes
        )
    f = compiled_figures(compiled)
    return StepCompilation(
        params_bytes, opt_bytes, batch_bytes, f.temp_bytes, f.total_bytes, f.peak_bytes, f.flops, compiled.as_text(), False,
        frozen_bytes=frozen_bytes, host_opt_state_bytes=host_bytes,
    )


@contextlib.contextmanager
def _quiet_libtpu(topology: TpuTopology):
    """Let several compiles share libtpu (it otherwise takes a machine-wide lock file, even for
    topology descriptions) and, off a TPU VM, stop it looking for TPU metadata (pages of warnings).

    The variables are set only while libtpu describes the slice: left behind, TPU_WORKER_HOSTNAMES
    would make a later `llm train` in the same process believe it runs on a TPU pod.
    """
    wanted = {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    if count_tpu_chips() == 0:
        wanted.update(
            TPU_SKIP_MDS_QUERY="1",
            TPU_WORKER_HOSTNAMES="localhost",
            TPU_WORKER_ID="0",
            TPU_ACCELERATOR_TYPE=topology.name.replace("v5e-", "v5litepod-"),
        )
    saved = {key: os.environ.get(key) for key in wanted}
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def topology_devices(topology: TpuTopology) -> list:
    """Compile-only devices of the slice (needs the libtpu wheel, not a TPU)."""
    from jax.experimental import topologies

    try:
        with _quiet_libtpu(topology):
            return list(topologies.get_topology_desc(topology.topology, "tpu", **topology.topology_kwargs).devices)
    except RuntimeError as err:
        if "not installed" in str(err) or "TPU support" in str(err):
            raise UserError(
                "llm compile needs the libtpu wheel to describe TPU slices; pip install -e '.[tpu]' "
                "(and keep JAX_PLATFORMS=cpu for other commands on this machine)"
            ) from None
        raise
