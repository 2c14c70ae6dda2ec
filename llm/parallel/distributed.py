"""Join a multi-process job: one JAX process per host (TPU VM worker, GPU node, or local CPU
process).

The plan comes from `llm.parallel.plan` (config + environment), the one-line failure messages
from `llm.parallel.rendezvous`; this module only acts on them, once, before any JAX computation.
"""

from __future__ import annotations

from typing import Mapping

import jax
import ml_collections

from llm.parallel.plan import DistributedPlan, plan_from_config
from llm.parallel.rendezvous import rendezvous


def initialize(config: ml_collections.ConfigDict, env: Mapping[str, str] | None = None) -> DistributedPlan:
    """Join the multi-process job described by `config.distributed` and the environment.

    Call once, before any JAX computation. A single-process plan changes nothing.
    """
    plan = plan_from_config(config.distributed, env)
    if not plan.multi_process:
        return plan
    if jax.distributed.is_initialized():
        return plan
    if plan.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", plan.cpu_collectives)
    if plan.kind == "tpu":
        jax.distributed.initialize(initialization_timeout=plan.timeout_s)
        return plan
    rendezvous(plan)
    jax.distributed.initialize(
        coordinator_address=plan.coordinator_address,
        num_processes=plan.num_processes,
        process_id=plan.process_id,
        initialization_timeout=plan.timeout_s,
        cluster_detection_method="deactivate",
    )
    return plan
