"""Token-level cross entropy in f32, summed (not averaged) so micro-batches add up exactly."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def cross_entropy_sums(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, z_loss: float = 0.0
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of token losses incl. z-loss, sum of plain cross entropy, number of target tokens)."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = (lse - target_logit) * mask
    total = nll + z_loss * jnp.square(lse) * mask if z_loss else nll
    return total.sum(), nll.sum(), mask.sum()


def _chunk_terms(h, w, y, m, z_loss: float, vocab_size: int, constrain, softcap_at: float = 0.0):
    """One chunk's (loss sum, nll sum) and their gradients w.r.t. h and w, computed together:
    softmax - onehot is the logits' gradient, so no logits outlive the chunk. softcap_at: the
    logits are cap * tanh(z / cap) of the matmul's z (Gemma 2), whose derivative scales g."""
    cd = h.dtype
    logits = constrain(jnp.einsum("btd,dv->btv", h, w.astype(cd), preferred_element_type=jnp.float32))
    if softcap_at:
        capped = jnp.tanh(logits / softcap_at)
        logits, slope = capped * softcap_at, 1.0 - jnp.square(capped)
    if vocab_size != w.shape[1]:
        logits = jnp.where(jnp.arange(w.shape[1]) < vocab_size, logits, -1e30)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
    nll = ((lse - target_logit) * m).sum()
    probs = jnp.exp(logits - lse[..., None])
    weight = m * (1.0 + 2.0 * z_loss * lse) if z_loss else m  # d(nll + z lse^2)/d lse, per token
    g = probs * weight[..., None] - jax.nn.one_hot(y, w.shape[1], dtype=jnp.float32) * m[..., None]
    if softcap_at:
        g = g * slope
    total = nll + (z_loss * (jnp.square(lse) * m).sum() if z_loss else 0.0)
    # Both gradient products take compute-dtype operands and accumulate in f32: on CPU a bf16 dot
    # with a bf16 result is upcast to an f32 dot, while bf16 operands with an f32 result run on
    # the bf16 matrix engine (and f32 compute is unchanged: the same f32 dots).
    gc = g.astype(cd)
    dh = jnp.einsum("btv,dv->btd", gc, w.astype(cd), preferred_element_type=jnp.float32).astype(h.dtype)
    dw = jnp.einsum("btd,btv->dv", h, gc, preferred_element_type=jnp.float32)
    return total, nll, dh, dw


def fused_head_cross_entropy(
    hidden: jax.Array,
    w: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    vocab_size: int,
    z_loss: float = 0.0,
    chunk: int,
    constrain: Callable[[jax.Array], jax.Array] = lambda x: x,
    softcap_at: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """cross_entropy_sums(hidden @ w, ...) without ever holding the (batch, length, vocab) logits.

    The f32 logits and their gradient are the largest tensors of a small model's step (GPT-2 at
    4 x 512: 412 MB each). Here each `chunk` of positions makes its logits, reduces them to the
    loss and, in the same pass, to the loss's gradients w.r.t. its hidden states and w (the
    softmax-minus-onehot identity), then drops them: no recomputation, so the step's FLOPs
    stay those of the plain loss (XLA cannot CSE a recompute back into a stored tensor, as it
    does with jax.checkpoint on CPU). When w is frozen (LoRA) its gradient is never consumed
    and XLA removes those matmuls. The nll sum is reported, not differentiated.
    """
    t = targets.shape[1]
    if t % chunk:
        raise ValueError(f"chunk {chunk} does not divide the sequence length {t}")
    mask = mask.astype(jnp.float32)

    @jax.custom_vjp
    def head_loss(h, w):
        return forward(h, w)[0]

    def forward(h, w):
        totals, nlls, dhs, dw = [], [], [], None
        for i in range(0, t, chunk):  # a Python loop: XLA's cost analysis counts a loop body once
            total, nll, dh, dw_i = _chunk_terms(h[:, i : i + chunk], w, targets[:, i : i + chunk], mask[:, i : i + chunk],
                                                z_loss, vocab_size, constrain, softcap_at)
            totals.append(total)
            nlls.append(nll)
            dhs.append(dh)
            dw = dw_i if dw is None else dw + dw_i
        return (sum(totals[1:], totals[0]), sum(nlls[1:], nlls[0])), (jnp.concatenate(dhs, axis=1), dw.astype(w.dtype))

    def backward(residuals, cotangent):
        dh, dw = residuals
        g_total, _ = cotangent  # the nll sum leaves through stop_gradient: its cotangent is zero
        return (g_total * dh).astype(dh.dtype), (g_total * dw).astype(dw.dtype)

    head_loss.defvjp(forward, backward)
    total, nll = head_loss(hidden, w)
    return total, jax.lax.stop_gradient(nll), mask.sum()


def lm_loss_fn(graphdef: nnx.GraphDef, z_loss: float = 0.0, combine: Callable | None = None) -> Callable:
    """Next-token loss for a decoder: `(trainable, frozen, batch, rng) -> (loss_sum, aux)`.

    `combine(trainable, frozen)` rebuilds the full parameter tree (identity in pretraining,
    where everything is trainable and `frozen` is empty).

    aux holds `tokens` (the denominator) and `nll_sum`; the step divides by the token count of
    the whole (accumulated) batch, so 4 micro-batches of B/4 equal one batch of B.
    """

    def loss_fn(trainable, frozen, batch, rng):
        del rng  # no dropout in pretraining; fine-tuning losses use it
        params = trainable if combine is None else combine(trainable, frozen)
        model = nnx.merge(graphdef, params)
        hidden = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
        spec, chunk = model.spec, model.spec.loss_chunk
        if chunk and chunk < hidden.shape[1] and hidden.shape[1] % chunk == 0:
            w = model.embed[...].T if model.head is None else model.head[...]
            constrain = lambda x: model.rules.constrain(x, ("batch", "length", "act_vocab"))  # noqa: E731
            total, nll, count = fused_head_cross_entropy(
                hidden, w, batch["targets"], batch["loss_mask"], vocab_size=spec.vocab_size, z_loss=z_loss,
                chunk=chunk, constrain=constrain, softcap_at=spec.final_softcap,
            )
        else:
            total, nll, count = cross_entropy_sums(model.logits(hidden), batch["targets"], batch["loss_mask"], z_loss)
        return total, {"tokens": count, "nll_sum": nll}

    return loss_fn
