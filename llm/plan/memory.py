"""Per-device memory of one train step by part: from the analytic model here, or from a compile
(llm.plan.compiled), and which of the two it came from.

The analytic model: parameters, frozen base and optimizer state exactly as the run shards them
(llm.plan.state); gradients in f32 like the trainable parameters (twice with gradient
accumulation: the running sum and the micro-batch's); activations by remat policy:

  none         every layer keeps its intermediates and its attention probabilities;
  save_matmul  every layer keeps its projection outputs (what the policy saves) and its input;
  full         every layer keeps only its input; one layer at a time is recomputed;

(only the layers the backward pass reaches: none below the lowest trained one)

With optim.offload_state the optimizer state is in host memory (`host`), and the device holds
it, old and new, only while it updates: after the backward pass, beside parameters and gradients.

Plus the working set of one layer's backward pass (its intermediates, attention probabilities and
their f32 gradient), the LM head's f32 logits and their gradient (one `model.loss_chunk` at a
time), and with FSDP one layer's gathered weights (double-buffered, in the compute dtype) and,
for trained weights, its unsharded f32 weight gradient before the reduce-scatter. A device holds
whole sequences: a micro-batch of B rows on D data-parallel devices costs ceil(B / D) rows each
(XLA cannot split a row over the batch axis, so 16 rows on 32 chips are 1 row per chip).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from llm.model.spec import ModelSpec
from llm.plan.state import AbstractState, total_bytes
from llm.pytree import path_keys


@dataclasses.dataclass(frozen=True)
class Memory:
    """Per-device bytes by part. Compiled figures cannot split activations from the other
    temporaries: `activations` is None there and `temporaries` holds all of them."""

    params: int  # trainable parameters
    frozen: int  # the frozen (possibly quantized) base of LoRA / QLoRA / freezing
    optimizer: int
    activations: int | None
    temporaries: int  # gradients, gathered weights, logits, workspace (compiled: every temporary)
    source: str  # "analytic" | "compiled (libtpu 0.0.42.1)" | "compiled (xla cpu)"
    batch: int = 0
    reported_total: int | None = None  # the compiler's total (arguments + outputs - aliases + temporaries)
    host: int = 0  # optim.offload_state: the optimizer state in host memory (in no device total)

    @property
    def total(self) -> int:
        if self.reported_total is not None:
            return self.reported_total
        return self.params + self.frozen + self.optimizer + (self.activations or 0) + self.temporaries + self.batch


# XLA:CPU fuses less than the TPU and GPU compilers, which the CPU compiles show: a layer keeps its
# f32 scores, exponentials and probabilities (3 score-sized tensors, against one compute-dtype
# tensor of probabilities on TPU), and a LoRA projection's `x W + s (x A) B` keeps the adapter
# branch's output beside the kernel's (one more tokens x outputs tensor per adapted MLP projection:
# a single adapted projection's gradient compiles to exactly one such tensor more than the plain
# one; the attention projections' sums fuse into the copies that reshape q, k, v and the heads).
UNFUSED_CPU = True


def _layer_params(spec: ModelSpec) -> int:
    d, hd = spec.d_model, spec.head_dim
    attn = d * (spec.n_heads + 2 * spec.n_kv_heads) * hd + spec.n_heads * hd * d
    mlp = d * spec.d_ff * (2 if spec.is_gpt2 else 3)
    return attn + mlp


def _score_count(spec: ModelSpec, rows: int, seq: int, tensor: int) -> int:
    """Attention scores one layer materialises per device: (query, key) pairs times heads; the
    blocked implementation computes each query block against the keys up to its end only."""
    heads = math.ceil(spec.n_heads / tensor)
    if spec.attention_impl == "splash":  # scores stay in VMEM; one log-sum-exp a query is kept
        pairs = seq
    elif spec.attention_impl == "blocked":
        blk = spec.attention_block
        pairs = sum((min(start + blk, seq) - start) * min(start + blk, seq) for start in range(0, seq, blk))
    else:
        pairs = seq * seq
    return rows * heads * pairs


def _adapter_outputs_per_layer(state: AbstractState) -> int:
    """Output values of the LoRA-adapted MLP projections of one layer (lora_b is (r, *out), with a
    leading layer axis when the layers are scanned); see UNFUSED_CPU."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.trainable):
        keys = path_keys(path)
        if keys[0] == "blocks" and keys[-1] == "lora_b" and "mlp" in keys:
            lead = 0 if isinstance(keys[1], int) else 1
            out = math.prod(leaf.shape[lead + 1 :])
            total += out if lead else out / state.spec.n_layers
    return int(total)


def layers_with_gradients(state: AbstractState) -> int:
    """Layers the backward pass reaches: from the lowest one holding a trained leaf upward (none
    of a frozen layer's activations are kept below it); all of them when the embeddings train."""
    n = state.spec.n_layers
    lowest = n
    for path, _ in jax.tree_util.tree_leaves_with_path(state.trainable):
        keys = path_keys(path)
        if keys[0] in ("embed", "pos_embed"):
            return n
        if keys[0] == "blocks":
            lowest = min(lowest, keys[1] if isinstance(keys[1], int) else 0)
    return n - lowest


def analytic_memory(config: ml_collections.ConfigDict, state: AbstractState, platform: str) -> Memory:
    """The model in the module docstring, for `config` on `state`'s mesh and `platform`'s compiler
    (tpu / gpu / cpu: XLA:CPU fuses less, see UNFUSED_CPU)."""
    spec = state.spec
    tensor = state.mesh["tensor"]
    fsdp = state.mesh["fsdp"]
    accum = config.train.grad_accum
    seq = config.data.seq_len
    split = state.mesh.get("sequence", 1)  # context parallelism: each device holds seq / split positions
    rows = math.ceil(config.data.batch_size / accum / state.data_parallel)  # per device, per micro-batch
    n = rows * seq // split
    c = jnp.dtype(spec.compute_dtype).itemsize
    d, hd, ff = spec.d_model, spec.head_dim, spec.d_ff
    qkv = (spec.n_heads + 2 * spec.n_kv_heads) * hd // tensor
    ffs = ff // tensor
    gated = not spec.is_gpt2
    # One layer's intermediates: input, two norms, two residuals, q/k/v, rotated q/k, attended heads,
    # o-projection, MLP gate/up/activation/product, down projection.
    layer_all = n * c * (6 * d + qkv + (spec.n_heads + spec.n_kv_heads) * hd // tensor + spec.n_heads * hd // tensor + (4 if gated else 2) * ffs)
    layer_matmuls = n * c * (d + qkv + d + (2 if gated else 1) * ffs + d)  # what save_matmul keeps
    scores = _score_count(spec, rows, seq, tensor) // split  # its queries against every key
    cpu = platform == "cpu"
    probs = scores * (3 * 4 if cpu else c)  # kept for the backward pass (see UNFUSED_CPU)
    if cpu:  # the adapter branch's output beside the kernel's, per adapted projection
        layer_all += n * c * _adapter_outputs_per_layer(state) // tensor
    L = layers_with_gradients(state)
    heads = spec.n_heads * hd // tensor
    named = {  # what each named policy keeps beside the layer input (llm.model.decoder.REMAT_POLICIES);
        # mlpwo feeds only a residual add, so keeping it keeps nothing more
        "full": 0, "save_out_proj": d, "save_qkv_proj": qkv, "save_dot_except_mlp": qkv + d,
        "save_dot_except_mlpwi": qkv + d, "save_dot_with_context_except_mlp": qkv + heads + d,
    }
    if spec.remat == "none":
        kept = L * (layer_all + probs)
    elif spec.remat == "save_matmul":
        kept = L * (layer_matmuls + n * c * d)
    else:
        kept = L * n * c * (d + named[spec.remat])
    # One layer's backward: under remat its recomputed intermediates and probabilities; always the
    # probabilities' f32 gradient.
    working = scores * 4 + (0 if spec.remat == "none" else layer_all + probs)
    activations = kept + working
    chunk = spec.loss_chunk or seq
    logits = rows * min(chunk, seq) // split * spec.padded_vocab // tensor * 4 * 2  # f32 logits and their gradient
    mask = 0 if spec.attention_impl == "splash" else rows * seq * seq // split  # the boolean mask, shared by the layers
    s = state.bytes()
    grads = s["params"] * (2 if accum > 1 else 1) * 4 // max(1, _dtype_size(state))
    gathered = 0
    if fsdp > 1:
        layer = _layer_params(spec) // tensor
        gathered = 2 * layer * c
        trained_share = total_bytes(state.trainable) / max(1, total_bytes(state.trainable) + _frozen_values_bytes(state))
        gathered += int(layer * 4 * trained_share)  # the unsharded weight gradient before its reduce-scatter
    batch = rows * accum * seq * 4 * 5  # inputs, targets, segments, positions, loss mask
    temporaries = int(logits + mask + grads + gathered)
    if not config.optim.offload_state:
        return Memory(s["params"], s["frozen"], s["optimizer"], int(activations), temporaries, "analytic", batch)
    # optim.offload_state: the moments come in once the gradients exist (llm.train.step), when the
    # activations are gone; then the parameters, gradients, old and new moments are what is held.
    update_phase = s["params"] + s["frozen"] + grads + 2 * s["optimizer"] + batch
    backward_phase = s["params"] + s["frozen"] + int(activations) + temporaries + batch
    temporaries += max(0, update_phase - backward_phase)
    return Memory(s["params"], s["frozen"], 0, int(activations), temporaries, "analytic", batch, host=s["optimizer"])


def _dtype_size(state: AbstractState) -> int:
    """Bytes per trainable value (the f32 gradient is 4 / this times the parameters)."""
    leaves = jax.tree_util.tree_leaves(state.trainable)
    return leaves[0].dtype.itemsize if leaves else 4


def _frozen_values_bytes(state: AbstractState) -> int:
    """The frozen base at the trainable dtype's size per value (what share of the weights trains)."""
    from llm.finetune.cost import count

    return count(state.frozen) * _dtype_size(state)
