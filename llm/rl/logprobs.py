"""Log-probs of a packed batch's targets, per token and summed per segment, in f32.

Every preference and RL loss (DPO and its family, reward-free SimPO/ORPO, GRPO, PPO) is a small
function of these numbers. They are computed with the training loss's chunking
(`model.loss_chunk`): each chunk of positions makes its logits, reduces them to the target's
log-prob and drops them, and the backward pass recomputes one chunk's logits at a time, so
neither direction ever holds the (batch, length, vocab) logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from llm.errors import UserError

if TYPE_CHECKING:
    from llm.model.decoder import Decoder


def _chunk_logits(h, w, vocab_size: int, constrain, softcap_at: float = 0.0):
    """(f32 logits of one chunk of hidden states, their derivative w.r.t. the matmul's output or
    None): padded vocabulary columns can never be predicted; softcap_at > 0 caps the logits at
    cap * tanh(z / cap) (Gemma 2), whose slope the backward needs."""
    logits = constrain(jnp.einsum("btd,dv->btv", h, w.astype(h.dtype), preferred_element_type=jnp.float32))
    slope = None
    if softcap_at:
        capped = jnp.tanh(logits / softcap_at)
        logits, slope = capped * softcap_at, 1.0 - jnp.square(capped)
    if vocab_size != w.shape[1]:
        logits = jnp.where(jnp.arange(w.shape[1]) < vocab_size, logits, -1e30)
    return logits, slope


def _split(x: jax.Array, chunk: int) -> jax.Array:
    """(B, T, ...) -> (T // chunk, B, chunk, ...): the chunks as the leading (scanned) axis."""
    return jnp.moveaxis(x.reshape(x.shape[0], -1, chunk, *x.shape[2:]), 1, 0)


def _join(x: jax.Array) -> jax.Array:
    """The inverse of _split."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def chunked_target_logprobs(
    hidden: jax.Array,
    w: jax.Array,
    targets: jax.Array,
    *,
    vocab_size: int,
    chunk: int,
    constrain: Callable[[jax.Array], jax.Array] = lambda x: x,
    softcap_at: float = 0.0,
) -> jax.Array:
    """log softmax(hidden @ w)[targets], (batch, length) f32, `chunk` positions at a time
    (with the logits soft-capped at `softcap_at` when > 0).

    The gradient w.r.t. the logits is g * (onehot - softmax); unlike the training loss (a scalar,
    whose gradients the forward can finish at once) the per-token cotangent g arrives only in
    the backward pass, so the backward recomputes each chunk's logits from the saved hidden
    states and log-partition: one extra head matmul, no stored logits.

    Both passes are lax.scans over the chunks, not the Python loop of train.loss: XLA:CPU runs
    unrolled chunks side by side (its schedule kept all their logits alive, a full (B, T, V)
    of temporaries), and a loop body's buffers are reused by construction on every backend.
    The price: XLA's cost analysis counts the head's FLOPs of one chunk only. When w is not
    differentiated (a frozen head under LoRA) XLA drops the dw matmul from the loop.
    """
    t = targets.shape[1]
    if chunk <= 0 or t % chunk:
        raise UserError(f"loss chunk {chunk} does not divide the batch length {t}; pick a divisor of {t} (model.loss_chunk)")

    @jax.custom_vjp
    def logprobs(h, w, y):
        return forward(h, w, y)[0]

    def forward(h, w, y):
        def body(_, hy):
            logits, _ = _chunk_logits(hy[0], w, vocab_size, constrain, softcap_at)
            lse = jax.nn.logsumexp(logits, axis=-1)
            return None, (jnp.take_along_axis(logits, hy[1][..., None], axis=-1)[..., 0] - lse, lse)

        _, (out, lse) = jax.lax.scan(body, None, (_split(h, chunk), _split(y, chunk)))
        return _join(out), (h, w, y, _join(lse))

    def backward(residuals, g):
        h, w, y, lse = residuals
        cd = h.dtype

        def body(dw, xs):
            h_i, y_i, lse_i, g_i = xs
            logits, slope = _chunk_logits(h_i, w, vocab_size, constrain, softcap_at)
            d_logits = (jax.nn.one_hot(y_i, w.shape[1], dtype=jnp.float32) - jnp.exp(logits - lse_i[..., None])) * g_i[..., None]
            d_logits = (d_logits if slope is None else d_logits * slope).astype(cd)
            dh_i = jnp.einsum("btv,dv->btd", d_logits, w.astype(cd)).astype(h.dtype)
            return dw + jnp.einsum("btd,btv->dv", h_i, d_logits, preferred_element_type=jnp.float32), dh_i

        xs = (_split(h, chunk), _split(y, chunk), _split(lse, chunk), _split(g.astype(jnp.float32), chunk))
        dw, dh = jax.lax.scan(body, jnp.zeros(w.shape, jnp.float32), xs)
        return _join(dh), dw.astype(w.dtype), None

    logprobs.defvjp(forward, backward)
    return logprobs(hidden, w, targets)


def token_logprobs(model: Decoder, hidden: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Each target's log-prob under the decoder `model`, (batch, length) f32, from its final
    hidden states: chunked by `model.spec.loss_chunk`, or from the full logits when it is 0 (or
    covers the whole length), as the training loss does. A chunk that does not divide the
    length is an error here (the training loss quietly falls back to the full logits).

    temperature: log-probs of logits / temperature, the distribution RL rollouts sample from
    (TRL's GRPO divides the logits the same way); the chunked path scales the head instead,
    which is the same product."""
    spec, chunk = model.spec, model.spec.loss_chunk
    # Soft-capped logits (Gemma 2) divide by the temperature after the cap, which scaling the
    # head cannot express: that case takes the full logits.
    if chunk and chunk < hidden.shape[1] and not (spec.final_softcap and temperature != 1.0):
        w = model.embed[...].T if model.head is None else model.head[...]
        if temperature != 1.0:
            w = w.astype(jnp.float32) / temperature
        constrain = lambda x: model.rules.constrain(x, ("batch", "length", "act_vocab"))  # noqa: E731
        return chunked_target_logprobs(
            hidden, w, targets, vocab_size=spec.vocab_size, chunk=chunk, constrain=constrain, softcap_at=spec.final_softcap
        )
    logits = model.logits(hidden)
    if temperature != 1.0:
        logits = logits.astype(jnp.float32) / temperature
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]


def segment_sums(
    values: jax.Array, weights: jax.Array, segment_ids: jax.Array, max_segments: int
) -> tuple[jax.Array, jax.Array]:
    """(sum of values * weights, sum of weights) per segment, each (batch, max_segments) f32:
    column s holds segment id s + 1 (ids run 1..max_segments per row, 0 is padding). Summed
    elementwise, not by a matmul, so accelerators keep full f32 precision."""
    values = values.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    member = segment_ids[..., None] == jnp.arange(1, max_segments + 1, dtype=segment_ids.dtype)  # (B, T, S)
    sums = jnp.where(member, (values * weights)[..., None], 0.0).sum(axis=1)
    counts = jnp.where(member, weights[..., None], 0.0).sum(axis=1)
    return sums, counts


def sequence_logprobs(model: Decoder, batch: Mapping[str, jax.Array], max_segments: int) -> tuple[jax.Array, jax.Array]:
    """Per-segment sums of the targets' log-probs over `loss_mask` and the per-segment mask sums
    (token counts), each (batch, max_segments) f32, for a packed batch (llm.data.batch keys).

    Differentiable w.r.t. the model's parameters; merge the model inside the function being
    differentiated (`nnx.merge(graphdef, params)`). A segment id above `max_segments` is not
    counted: check host batches with `check_segments`.
    """
    hidden = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
    logprobs = token_logprobs(model, hidden, batch["targets"])
    return segment_sums(logprobs, batch["loss_mask"], batch["segment_ids"], max_segments)


def check_segments(segment_ids: np.ndarray, max_segments: int) -> None:
    """Host-side check that a batch's segment ids fit `max_segments` columns (the sums drop the rest)."""
    low, top = int(np.min(segment_ids, initial=0)), int(np.max(segment_ids, initial=0))
    if low < 0 or top > max_segments:
        raise UserError(
            f"segment ids run from {low} to {top} but must lie in 0..max_segments={max_segments}; "
            "set max_segments to the most sequences packed into one row"
        )
