"""Step time from step FLOPs, the chips' peak, a measured MFU and a communication model.

  compute = step model FLOPs / (chips x peak x MFU)                       (DESIGN.md FLOPs)
  FSDP    = per micro-batch: every weight all-gathered for the forward pass and again for the
            backward pass (a third time under remat, whose recompute gathers again), in its
            stored dtype, and the trained weights' f32 gradients reduce-scattered; a ring moves
            (n - 1) / n of the full bytes through each chip's link
  data    = once per step: the trained weights' f32 gradients all-reduced over the data axis
            (a ring all-reduce moves 2 (n - 1) / n of them)
  step    = max(compute, communication): XLA overlaps the collectives with the layers' matmuls,
            so communication costs time only where it exceeds the compute.
The MFU row (llm.plan.mfu) says where the MFU came from. On a CPU the peak is measured in the
same process just before (llm.train.flops.device_peak_flops), so a machine whose cores are
shared slows the prediction as it slows the run.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from llm.plan.hardware import Hardware
from llm.plan.mfu import MfuRow
from llm.plan.state import AbstractState, total_bytes
from llm.train.flops import flops_per_token


@dataclasses.dataclass(frozen=True)
class StepTime:
    step_flops: float  # model FLOPs of one step, all chips
    compute_s: float
    comm_s: float
    comm_bytes_per_chip: float

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.comm_s)


def step_flops(config: ml_collections.ConfigDict, state: AbstractState) -> float:
    """Model FLOPs of one step: the DESIGN.md formula, without weight gradients for frozen
    weights and without input gradients below the lowest trained layer (llm.finetune.cost)."""
    from llm.finetune.cost import step_flops_per_token
    from llm.finetune.tasks import is_partitioned

    seq = config.data.seq_len
    if is_partitioned(config):
        per_token = step_flops_per_token(config, state.spec, state.trainable, state.frozen)
    else:
        per_token = flops_per_token(state.spec, seq)
    return per_token * config.data.batch_size * seq


def communication(config: ml_collections.ConfigDict, state: AbstractState) -> float:
    """Bytes each chip sends per step (the module docstring's FSDP and data-parallel model)."""
    fsdp, data = state.mesh["fsdp"], state.mesh["data"]
    weights = total_bytes(state.trainable) + total_bytes(state.frozen)
    grads = 4 * sum(x.size for x in _leaves(state.trainable))
    sent = 0.0
    if fsdp > 1:
        gathers = 2 + (state.spec.remat != "none")
        sent += config.train.grad_accum * (gathers * weights + grads) * (fsdp - 1) / fsdp
    if data > 1:
        sent += 2 * grads * (data - 1) / data
    return sent


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def step_time(config: ml_collections.ConfigDict, state: AbstractState, hw: Hardware, mfu: MfuRow, peak: float) -> StepTime:
    """`peak`: per-chip FLOP/s (the table's for accelerators, measured in-process for cpu)."""
    flops = step_flops(config, state)
    compute = flops / (hw.chips * peak * mfu.mfu)
    sent = communication(config, state)
    comm = sent / hw.link_bytes_s if hw.link_bytes_s else 0.0
    return StepTime(flops, compute, comm, sent)
