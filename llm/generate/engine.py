"""The compiled core of generation: prefill the prompts in one pass, then decode inside a
`lax.while_loop` over a preallocated KV cache.

Layout: prompts are left-padded to a bucket length P, so every row's next token goes to the
same cache slot (one `dynamic_update_slice` per step) while RoPE / learned positions stay
per-row (`slot - pad`). The cache has S = P + N slots for N = the new-token bucket, held on
CPU as blocks (llm.generate.kv_cache) so that attention reads only the blocks decoding has
reached. Shapes depend only on (batch, P, N, stop-list width), so prompts of other lengths
reuse the compiled program.

Everything is a pure function of pytrees (`nnx.merge` happens inside the jitted functions), and
`decode` takes a step limit so the host can run the loop in chunks to stream tokens without
recompiling.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from llm.generate.sampling import SamplingMode, choose_tokens, token_logprobs
from llm.generate.cached_forward import hidden_states_cached
from llm.generate.kv_cache import DECODE_BLOCK, block_arrays, block_sizes, block_starts, init_cache


class DecodeState(NamedTuple):
    """Everything the decode loop carries; `step` = how many new-token columns are filled."""

    cache: Any
    kv_valid: jax.Array  # (B, S) bool: the slot holds a real token of the row
    tokens: jax.Array  # (B, N) int32 new tokens, pad_id where none was generated
    logprobs: jax.Array  # (B, N) f32, or (B, 0) when not requested
    last: jax.Array  # (B,) int32 token to feed next
    positions: jax.Array  # (B,) int32 position of `last` in its sequence
    lengths: jax.Array  # (B,) int32 new tokens generated
    done: jax.Array  # (B,) bool
    step: jax.Array  # () int32
    key: jax.Array  # PRNG key of the request
    max_new: jax.Array  # (B,) int32
    stop_ids: jax.Array  # (B, K, M) int32: K stop sequences of <= M tokens, right-aligned, -1 = none
    temperature: jax.Array  # () f32
    top_p: jax.Array  # () f32
    # () f32: the returned log-probs are of logits / this (1 = the model's own distribution; RL
    # rollouts pass the sampling temperature, which is what their training forward computes)
    logprob_temperature: jax.Array
    rope: Any = None  # layer window -> RoPE (cos, sin) of `last`'s positions (model.window_ropes)


def _hit_stop(tokens: jax.Array, column: jax.Array, stop_ids: jax.Array) -> jax.Array:
    """(B,) whether the new tokens up to `column` end with one of the row's stop sequences."""
    m = stop_ids.shape[-1]
    if m == 1:
        return jnp.any(tokens[jnp.arange(tokens.shape[0]), column][:, None] == stop_ids[..., 0], axis=-1)
    padded = jnp.pad(tokens, ((0, 0), (m - 1, 0)), constant_values=-2)  # nothing before the first new token
    tail = jax.lax.dynamic_slice_in_dim(padded, column, m, axis=1)  # columns column-m+1 .. column
    match = jnp.all((stop_ids == -1) | (stop_ids == tail[:, None, :]), axis=-1) & jnp.any(stop_ids != -1, axis=-1)
    return jnp.any(match, axis=-1)


def _emit(state: DecodeState, logits: jax.Array, mode: SamplingMode, pad_id: int) -> DecodeState:
    """Pick column `state.step`'s token from logits (B, V) and update the row bookkeeping."""
    column = state.step
    key = jax.random.fold_in(state.key, column)
    active = ~state.done
    tok = jnp.where(active, choose_tokens(key, logits, mode, state.temperature, state.top_p), pad_id)
    tokens = jax.lax.dynamic_update_slice(state.tokens, tok[:, None], (0, column))
    logprobs = state.logprobs
    if logprobs.shape[1]:
        lp = jnp.where(active, token_logprobs(logits / state.logprob_temperature, tok), 0.0)
        logprobs = jax.lax.dynamic_update_slice(logprobs, lp[:, None], (0, column))
    lengths = state.lengths + active.astype(jnp.int32)
    hit_stop = _hit_stop(tokens, column, state.stop_ids)
    done = state.done | (active & hit_stop) | (lengths >= state.max_new)
    return state._replace(
        tokens=tokens,
        logprobs=logprobs,
        last=tok,
        positions=state.positions + 1,
        lengths=lengths,
        done=done,
        step=column + 1,
    )


def prefill(
    graphdef: nnx.GraphDef,
    params: Any,
    prompts: jax.Array,
    prompt_lens: jax.Array,
    max_new: jax.Array,
    stop_ids: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    logprob_temperature: jax.Array,
    *,
    mode: SamplingMode,
    new_tokens: int,
    return_logprobs: bool,
    pad_id: int,
    kv_block: int = DECODE_BLOCK,
) -> DecodeState:
    """Run the left-padded prompts (B, P) through the model in one pass, fill the cache and
    choose the first new token of every row with max_new > 0. kv_block: slots per decode block
    of the KV cache (`kv_cache.block_sizes`), 0 = the whole cache as one block."""
    model = nnx.merge(graphdef, params)
    batch, p = prompts.shape
    pad = p - prompt_lens
    kv_valid = jnp.arange(p + new_tokens)[None, :] >= pad[:, None]
    positions = jnp.maximum(jnp.arange(p)[None, :] - pad[:, None], 0)
    cache = init_cache(model, batch, p + new_tokens, blocks=block_sizes(p, new_tokens, kv_block) if kv_block else None)
    hidden, cache = hidden_states_cached(model, prompts, positions, kv_valid, cache, jnp.zeros((), jnp.int32), reach=0)
    logits = model.logits(hidden[:, -1:])[:, 0]
    state = DecodeState(
        cache=cache,
        kv_valid=kv_valid,
        tokens=jnp.full((batch, new_tokens), pad_id, jnp.int32),
        logprobs=jnp.zeros((batch, new_tokens if return_logprobs else 0), jnp.float32),
        last=jnp.full((batch,), pad_id, jnp.int32),
        positions=prompt_lens - 1,
        lengths=jnp.zeros((batch,), jnp.int32),
        done=max_new <= 0,
        step=jnp.zeros((), jnp.int32),
        key=key,
        max_new=max_new,
        stop_ids=stop_ids,
        temperature=temperature,
        top_p=top_p,
        logprob_temperature=logprob_temperature,
    )
    return _next_rope(model, _emit(state, logits, mode, pad_id))


def _next_rope(model: Any, state: DecodeState) -> DecodeState:
    """Carry the RoPE tables for the next step's positions: a loop-carried value is
    materialised once, where tables computed inside the step get fused, cos/sin and all, into
    each layer's q and k rotation by XLA, which then evaluates them once per element (heads x
    head_dim times too often) in every layer."""
    positions = jnp.minimum(state.positions, model.spec.max_seq_len - 1)[:, None]
    return state._replace(rope=model.window_ropes(positions))


def decode(
    graphdef: nnx.GraphDef,
    params: Any,
    state: DecodeState,
    limit: jax.Array,
    *,
    mode: SamplingMode,
    pad_id: int,
) -> DecodeState:
    """Decode one token per step until `limit` columns are filled, every row is done, or the
    buffer is full. Done rows keep flowing through the batch but write nothing.

    One `lax.while_loop` per cache block, each running the steps whose token lands in that
    block, with attention over blocks 0..that one fixed at compile time: a step then reads only
    the cache it has reached without any per-step conditional, and writes one block. (The
    earlier design, one loop with a `lax.cond` per block, layer and K/V, spent more time
    dispatching those small ops than reading the cache.) A loop whose steps are already past,
    or beyond `limit`, exits at once, so calling again with a larger limit resumes."""
    model = nnx.merge(graphdef, params)
    n = state.tokens.shape[1]
    prompt_slots = state.kv_valid.shape[1] - n
    max_position = model.spec.max_seq_len - 1
    stop_at = jnp.minimum(limit, n)
    blocks = block_arrays(state.cache, model.spec.scan_layers)
    sizes = [b.shape[-2] for b in blocks]
    starts = block_starts(blocks)

    def run_block(state: DecodeState, reach: int) -> DecodeState:
        # Step s feeds the token of slot prompt_slots + s - 1: block `reach` takes the steps
        # up to (not including) `end`.
        end = starts[reach] + sizes[reach] - prompt_slots + 1

        def cond(s: DecodeState) -> jax.Array:
            return (s.step < jnp.minimum(stop_at, end)) & ~jnp.all(s.done)

        def body(s: DecodeState) -> DecodeState:
            index = prompt_slots + s.step - 1
            positions = jnp.minimum(s.positions, max_position)[:, None]
            hidden, cache = hidden_states_cached(
                model, s.last[:, None], positions, s.kv_valid, s.cache, index, s.rope, reach=reach
            )
            logits = model.logits(hidden)[:, 0]
            return _next_rope(model, _emit(s._replace(cache=cache), logits, mode, pad_id))

        return jax.lax.while_loop(cond, body, state)

    for reach in range(len(sizes)):
        if starts[reach] + sizes[reach] > prompt_slots:  # a block that decoding writes into
            state = run_block(state, reach)
    return state


class Engine:
    """The jitted prefill and decode for one model graph. Compiled programs are cached by jax
    per (batch, prompt bucket, new-token bucket, stop-list width, sampling mode)."""

    def __init__(self, graphdef: nnx.GraphDef, pad_id: int):
        cpu = jax.default_backend() == "cpu"
        # The blocked cache (one decode loop per block) is measured on CPU only; elsewhere the
        # cache is one block and decoding one loop.
        self.prefill = jax.jit(
            functools.partial(prefill, graphdef, pad_id=pad_id, kv_block=DECODE_BLOCK if cpu else 0),
            static_argnames=("mode", "new_tokens", "return_logprobs"),
        )
        self.decode = jax.jit(
            functools.partial(decode, graphdef, pad_id=pad_id),
            static_argnames=("mode",),
            donate_argnames=("state",),
        )
