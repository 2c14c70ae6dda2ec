"""Per-device bytes of a run's state (trainable parameters, frozen base, optimizer state) on N
devices of any kind, exactly as the run would shard them, without devices.

The run is assembled as llm.compile.aot.abstract_setup assembles it (same rules, model, fine-tuning
partition and optimizer), but on a jax AbstractMesh of the config's mesh sizes: no device, no
compiler, so it answers for GPUs and for slices libtpu is not asked about.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import ml_collections
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from llm.compile.aot import per_device_bytes
from llm.model.build import abstract_model, param_shardings
from llm.model.spec import ModelSpec, model_spec
from llm.parallel.mesh import MESH_AXES, resolve_mesh_shape
from llm.parallel.rules import AxisRules
from llm.pytree import with_shardings
from llm.train.optimizer import build_optimizer
from llm.train.setup import opt_state_shardings


@dataclasses.dataclass(frozen=True)
class AbstractState:
    """The run's state on an abstract mesh (per-device figures follow its shardings)."""

    spec: ModelSpec
    mesh: dict[str, int]
    trainable: Any  # ShapeDtypeStructs (QTensors hold them) with shardings
    frozen: Any
    opt_state: Any

    @property
    def data_parallel(self) -> int:
        return self.mesh["data"] * self.mesh["fsdp"]

    def bytes(self) -> dict[str, int]:
        return {
            "params": per_device_bytes(self.trainable),
            "frozen": per_device_bytes(self.frozen),
            "optimizer": per_device_bytes(self.opt_state),
        }


def total_bytes(tree: Any) -> int:
    """Bytes of a tree over all devices (one copy)."""
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def abstract_state(config: ml_collections.ConfigDict, n_devices: int, platform: str) -> AbstractState:
    """The state of `config` on `n_devices` devices of `platform` (tpu / gpu / cpu)."""
    from llm.finetune.tasks import is_partitioned, partition_for_config

    sizes = resolve_mesh_shape(config.mesh, n_devices)
    mesh = AbstractMesh(tuple(sizes), MESH_AXES)
    rules = AxisRules.from_config(config.mesh.rules, mesh)
    spec = model_spec(config, vocab_shards=rules.shards("vocab"), platform=platform)
    graphdef, abstract = abstract_model(spec, rules, config.train.seed)
    params = with_shardings(abstract.to_pure_dict(), param_shardings(abstract, spec, rules))
    frozen: Any = {}
    if is_partitioned(config):
        graphdef, params, frozen = partition_for_config(config).apply(graphdef, params)
    optimizer, _ = build_optimizer(config.optim, config.train.steps, config.precision.optimizer_state)
    p_shardings = jax.tree_util.tree_map(lambda x: x.sharding, params)
    o_shardings = opt_state_shardings(optimizer, params, p_shardings, NamedSharding(mesh, PartitionSpec()))
    opt_state = with_shardings(jax.eval_shape(optimizer.init, params), o_shardings)
    return AbstractState(spec, dict(zip(MESH_AXES, sizes)), params, frozen, opt_state)
