"""TPU attention: Pallas splash attention with packed-sequence segment ids and GQA, under the mesh.

Why: the XLA path materialises every layer's (batch, heads, T, T) scores and its boolean mask;
splash streams query and key blocks through VMEM and skips the blocks the causal mask empties,
so long sequences fit. Segment ids go to the kernel itself (a query attends only to keys of its
own document), never a dense mask. The kernel sees one example's (heads, T, head_dim); it is
vmapped over the rows and run per shard under shard_map over the batch and head axes of the
mesh. Keys are not split over the sequence: `model.attention_impl=splash` with `mesh.sequence`
> 1 is refused (llm.config.validate).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llm.errors import ConfigError
from llm.parallel.rules import AxisRules

LANES = 128  # the kernel's head_dim and block sizes are multiples of the TPU's 128 lanes


def splash_block(attention_block: int, seq_len: int) -> int:
    """The kernel's block: model.attention_block where it is a multiple of 128 (the blocked
    path's 64-position default is not), else 512, at most the sequence."""
    return min(attention_block if attention_block % LANES == 0 else 512, seq_len)


def check_splash_shape(head_dim: int, seq_len: int, block: int) -> None:
    """A one-line ConfigError where the kernel cannot take the shape."""
    if head_dim % LANES:
        raise ConfigError(f"model.attention_impl=splash needs a head_dim that is a multiple of {LANES}, not {head_dim}; "
                          f"use attention_impl=xla (or blocked) for this model")
    if block % LANES or seq_len % block:
        raise ConfigError(f"model.attention_block={block} with seq_len={seq_len}: splash blocks are multiples of "
                          f"{LANES} that divide the sequence; set model.attention_block to e.g. {min(512, seq_len)}")


@functools.lru_cache(maxsize=None)
def _kernel(heads: int, length: int, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
    b = min(block, length)
    sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, rules: AxisRules,
                     scale: float | None = None, block: int = 512, interpret: bool = False) -> jax.Array:
    """Causal attention of q (B, T, H, hd) over k, v (B, T, KV, hd) within each row's segments
    (B, T) (None: one document a row); returns (B, T, H, hd). `interpret` runs the kernel in
    Pallas' interpreter (CPU tests)."""
    _, length, heads, head_dim = q.shape
    check_splash_shape(head_dim, length, block)
    scale = head_dim**-0.5 if scale is None else scale
    q = (q * jnp.asarray(scale, q.dtype)).swapaxes(1, 2)  # the kernel does not scale the scores
    k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)
    head_spec = rules.spec(("batch", "act_heads", None, None))
    kv_spec = rules.spec(("batch", "act_kv_heads", None, None))
    row_spec = rules.spec(("batch", None))
    local_heads = heads // rules.shards("act_heads") if rules.mesh is not None else heads
    kernel = _kernel(local_heads, length, block, interpret)

    def local(q, k, v, *ids):  # ids: () or (segment ids,)
        from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

        if not ids:
            return jax.vmap(kernel)(q, k, v)
        return jax.vmap(lambda q, k, v, i: kernel(q, k, v, segment_ids=sk.SegmentIds(i, i)))(q, k, v, *ids)

    ids = () if segment_ids is None else (segment_ids,)
    if rules.mesh is None or rules.mesh.size == 1:
        out = local(q, k, v, *ids)
    else:
        specs = (head_spec, kv_spec, kv_spec) + (row_spec,) * len(ids)
        out = jax.shard_map(local, mesh=rules.mesh, in_specs=specs, out_specs=head_spec, check_vma=False)(q, k, v, *ids)
    return out.swapaxes(1, 2)
