"""Assemble a run from its config: mesh, rules, model, optimizer, sharded state, jitted steps.

Everything here is created directly on the mesh: parameters by a jitted init with
out_shardings, optimizer state by a jitted `optimizer.init` that inherits those shardings.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm.errors import ConfigError
from llm.model.build import init_params
from llm.model.spec import ModelSpec, model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.multihost import check_process_rows
from llm.parallel.rules import AxisRules
from llm.pytree import abstract_like
from llm.train.loss import lm_loss_fn
from llm.train.optimizer import build_optimizer
from llm.train.partition import Partition
from llm.train.step import LossFn, TrainState, make_eval_step, make_train_step

log = logging.getLogger("llm")


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    config: ml_collections.ConfigDict
    mesh: Mesh
    rules: AxisRules
    spec: ModelSpec
    graphdef: nnx.GraphDef
    state_shardings: Any
    batch_sharding: NamedSharding
    train_step: Callable  # jitted (state, batch, frozen) -> (state, metrics), state donated
    eval_step: Callable  # jitted (params, frozen, batch) -> {"loss_sum", "tokens", the loss's other sums}
    schedule: Callable
    # Set only for partitioned (fine-tuning) runs: the base model before the partition, and its
    # params as sharded ShapeDtypeStructs (the template the start weights are loaded into).
    partition: Partition | None = None
    base_graphdef: nnx.GraphDef | None = None
    base_params: Any = None

    def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Place this process's rows of the global batch on the mesh."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v)) for k, v in batch.items()
        }


def data_parallel_size(mesh: Mesh, rules: AxisRules) -> int:
    return int(np.prod([mesh.shape[a] for a in rules.axes_for("batch")]))


def check_batch(config: ml_collections.ConfigDict, mesh: Mesh, rules: AxisRules) -> None:
    dp = data_parallel_size(mesh, rules)
    batch = config.data.batch_size
    if batch % dp:
        raise ConfigError(
            f"data.batch_size={batch} is not divisible by the data-parallel size {dp} "
            f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); use a multiple of {dp}"
        )
    if batch % jax.process_count():
        raise ConfigError(f"data.batch_size={batch} is not divisible by the {jax.process_count()} processes")


def opt_state_shardings(optimizer, params, param_shardings, replicated: NamedSharding, on_host: bool = False) -> Any:
    """Moments shard like their parameters (in pinned host memory when `on_host`:
    optim.offload_state); counters and other scalars are replicated on the devices."""
    if on_host:
        check_host_memory(replicated.mesh)
    abstract = jax.eval_shape(optimizer.init, params)
    moment = (lambda _, sharding: sharding.with_memory_kind(HOST_MEMORY)) if on_host else (lambda _, sharding: sharding)
    return optax.tree_map_params(optimizer, moment, abstract, param_shardings, transform_non_params=lambda _: replicated)


HOST_MEMORY = "pinned_host"  # what JAX calls host memory the accelerator reads by DMA


def check_host_memory(mesh: Mesh) -> None:
    """optim.offload_state needs host memory the backend can address from a step."""
    if not hasattr(mesh, "devices"):  # an AbstractMesh (planning): no devices to ask
        return
    device = mesh.devices.flat[0]
    kinds = [m.kind for m in device.addressable_memories()]
    if HOST_MEMORY not in kinds:
        raise ConfigError(
            f"optim.offload_state=True needs {HOST_MEMORY} memory and {device.platform} devices offer {', '.join(kinds)}; "
            f"set optim.offload_state=False"
        )


def device_memory(shardings: Any) -> Any:
    """The same shardings in device memory: where an offloaded optimizer state is updated."""
    return jax.tree_util.tree_map(lambda s: s.with_memory_kind("device"), shardings)


def precision_summary(config: ml_collections.ConfigDict, spec: ModelSpec, platform: str | None = None) -> str:
    """The precision log line; on a CPU under `auto` it says why compute is bf16 or f32."""
    why = ""
    if config.precision.compute == "auto" and platform == "cpu":
        from llm.cpu.precision import cpu_compute_choice

        why = f": {cpu_compute_choice().reason}"
    return (
        f"precision: params {config.precision.params}, compute {jnp.dtype(spec.compute_dtype).name} "
        f"(config: {config.precision.compute}{why}), logits/loss float32, optimizer state {config.precision.optimizer_state}"
    )


def _mesh_rules_spec(config: ml_collections.ConfigDict, devices: list | None) -> tuple[Mesh, AxisRules, ModelSpec]:
    mesh = build_mesh(config.mesh, devices)  # over the job's devices unless given: job-shaped errors
    rules = AxisRules.from_config(config.mesh.rules, mesh)
    check_batch(config, mesh, rules)
    check_process_rows(rules.sharding(("batch", "length")), (config.data.batch_size, config.data.seq_len))
    spec = model_spec(config, vocab_shards=rules.shards("vocab"), platform=mesh.devices.flat[0].platform, devices=mesh.size)
    if spec.padded_vocab != spec.vocab_size:
        log.info(
            "vocab padded from %d to %d (multiple of %d x %d vocab shards)",
            spec.vocab_size, spec.padded_vocab, config.model.vocab_multiple, rules.shards("vocab"),
        )
    log.info(precision_summary(config, spec, mesh.devices.flat[0].platform))
    return mesh, rules, spec


def jit_train_step(config: ml_collections.ConfigDict, loss_fn: LossFn, optimizer, schedule, state_shardings: Any, batch_sharding) -> Callable:
    """The jitted step every run uses (and `llm compile` lowers): state sharded and donated; an
    offloaded optimizer state comes into device memory for the update and leaves through
    out_shardings back to the host."""
    on_device = device_memory(state_shardings.opt_state) if config.optim.offload_state else None
    step_fn = make_train_step(
        loss_fn,
        optimizer,
        schedule,
        seed=config.train.seed,
        grad_accum=config.train.grad_accum,
        skip_nonfinite=config.train.nan_policy == "skip",
        opt_state_to_device=None if on_device is None else (lambda opt_state: jax.device_put(opt_state, on_device)),
    )
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding, None),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


def _assemble(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    rules: AxisRules,
    spec: ModelSpec,
    graphdef: nnx.GraphDef,
    params: Any,
    param_shardings: Any,
    loss_fn: LossFn,
    eval_loss_fn: LossFn,
    **extra: Any,
) -> tuple[TrainSetup, TrainState]:
    """Optimizer over `params` (the trainable ones), sharded state and the jitted steps."""
    optimizer, schedule = build_optimizer(config.optim, config.train.steps, config.precision.optimizer_state)
    replicated = NamedSharding(mesh, PartitionSpec())
    o_shardings = opt_state_shardings(optimizer, params, param_shardings, replicated, config.optim.offload_state)
    opt_state = jax.jit(optimizer.init, out_shardings=o_shardings)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
    state = TrainState(step, params, opt_state)
    state_shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
    batch_sharding = rules.sharding(("batch", "length"))
    train_step = jit_train_step(config, loss_fn, optimizer, schedule, state_shardings, batch_sharding)
    eval_step = jax.jit(make_eval_step(eval_loss_fn), in_shardings=(state_shardings.params, None, batch_sharding))
    setup = TrainSetup(
        config=config,
        mesh=mesh,
        rules=rules,
        spec=spec,
        graphdef=graphdef,
        state_shardings=state_shardings,
        batch_sharding=batch_sharding,
        train_step=train_step,
        eval_step=eval_step,
        schedule=schedule,
        **extra,
    )
    return setup, state


def build_setup(
    config: ml_collections.ConfigDict,
    loss_fn: LossFn | None = None,
    devices: list | None = None,
) -> tuple[TrainSetup, TrainState]:
    """Build the run and a freshly initialised, sharded TrainState."""
    mesh, rules, spec = _mesh_rules_spec(config, devices)
    graphdef, params, param_shardings = init_params(spec, rules, config.train.seed)
    loss_fn = loss_fn or lm_loss_fn(graphdef, config.train.z_loss)
    return _assemble(config, mesh, rules, spec, graphdef, params, param_shardings, loss_fn, loss_fn)


def build_partitioned_setup(
    config: ml_collections.ConfigDict,
    partition: Partition,
    devices: list | None = None,
) -> tuple[TrainSetup, TrainState, Any]:
    """Like build_setup for a fine-tuning run: the freshly initialised params go through
    `partition.apply`, the state holds only the trainable part, and the frozen part is returned
    (the loop replaces both when it loads the start weights)."""
    mesh, rules, spec = _mesh_rules_spec(config, devices)
    base_graphdef, full, _ = init_params(spec, rules, config.train.seed)
    base_params = abstract_like(full)
    graphdef, trainable, frozen = partition.apply(base_graphdef, full)
    del full
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, trainable)
    loss_fn = partition.loss_fn(graphdef)
    eval_loss_fn = partition.eval_loss_fn(graphdef) if partition.eval_loss_fn is not None else loss_fn
    setup, state = _assemble(
        config, mesh, rules, spec, graphdef, trainable, shardings, loss_fn, eval_loss_fn,
        partition=partition, base_graphdef=base_graphdef, base_params=base_params,
    )
    return setup, state, frozen
