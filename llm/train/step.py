"""The pure train and eval steps: `(state, batch, frozen) -> (state, metrics)`.

The loss function and the trainable/frozen split are arguments, so pretraining, SFT, LoRA and
preference losses are the same step with other inputs. The state is donated; the step RNG is
`fold_in(seed, step)`, so a resumed run draws the same randomness.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from llm.train.optimizer import global_norm

# loss_fn(trainable, frozen, batch, rng) -> (loss_sum, {"tokens": count, ...sums})
LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict]]


class TrainState(NamedTuple):
    step: jax.Array
    params: Any  # the trainable parameters (all of them in pretraining)
    opt_state: Any


def split_micro_batches(batch: dict, n: int) -> dict:
    """(B, ...) -> (n, B/n, ...), taking every n-th row so each micro-batch stays spread over
    the data-parallel devices (a contiguous split would move rows between devices)."""

    def split(x):
        return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree_util.tree_map(split, batch)


def _sum_loss_and_grads(loss_fn: LossFn, params, frozen, batch, rng, grad_accum: int):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum == 1:
        (loss_sum, aux), grads = grad_fn(params, frozen, batch, rng)
        return loss_sum, aux, grads

    micro = split_micro_batches(batch, grad_accum)

    def body(carry, xs):
        loss_acc, aux_acc, grad_acc = carry
        mb, index = xs
        (loss_sum, aux), grads = grad_fn(params, frozen, mb, jax.random.fold_in(rng, index))
        grad_acc = jax.tree_util.tree_map(lambda a, g: a + g.astype(jnp.float32), grad_acc, grads)
        aux_acc = jax.tree_util.tree_map(jnp.add, aux_acc, aux)
        return (loss_acc + loss_sum, aux_acc, grad_acc), None

    aux_shape = jax.eval_shape(lambda: grad_fn(params, frozen, jax.tree_util.tree_map(lambda x: x[0], micro), rng)[0][1])
    zeros_aux = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
    zeros_grads = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (loss_sum, aux, grads), _ = jax.lax.scan(
        body, (jnp.zeros((), jnp.float32), zeros_aux, zeros_grads), (micro, jnp.arange(grad_accum))
    )
    return loss_sum, aux, grads


def _after(grad_norm: jax.Array, fn: Callable[[Any], Any], operand: Any) -> Any:
    """fn(operand), run only once the gradients (their norm) exist: for the host-to-device copy of an offloaded
    optimizer state. Left free, or behind an optimization_barrier, XLA's scheduler starts that
    copy with the step, and the moments sit in HBM beside the activations they are meant to spare
    (llama3_8b on v5p-64 compiled to the same 52.5 GiB with or without offloading). A branch of a
    conditional on the gradients (always true: a NaN norm compares false) cannot start before its
    predicate exists. Only the copy is in the branch: with the update in it too, the branches'
    outputs took a third copy of the moments (tiny on v5e-8)."""
    ready = jnp.logical_not(grad_norm < 0.0)
    return jax.lax.cond(ready, fn, fn, operand)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    seed: int,
    grad_accum: int = 1,
    skip_nonfinite: bool = False,
    opt_state_to_device: Callable[[Any], Any] | None = None,
) -> Callable[[TrainState, dict, Any], tuple[TrainState, dict]]:
    """Build the (un-jitted) step; callers jit it with shardings and donation.
    `opt_state_to_device`: brings an optimizer state kept in host memory (optim.offload_state) to
    the devices; the jit's out_shardings send the new one back."""

    def train_step(state: TrainState, batch: dict, frozen: Any) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        loss_sum, aux, grads = _sum_loss_and_grads(loss_fn, state.params, frozen, batch, rng, grad_accum)
        tokens = jnp.maximum(aux["tokens"], 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / tokens, grads)
        loss = loss_sum / tokens
        grad_norm = global_norm(grads)
        old_opt_state = state.opt_state
        if opt_state_to_device is not None:
            old_opt_state = _after(grad_norm, opt_state_to_device, old_opt_state)
        updates, opt_state = optimizer.update(grads, old_opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "update_norm": global_norm(updates),
            "param_norm": global_norm(params),
            "learning_rate": schedule(state.step),
            "tokens": aux["tokens"],
        }
        for key, value in aux.items():
            if key.endswith("_sum"):
                metrics[key[: -len("_sum")]] = value / tokens
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        metrics["finite"] = finite
        if skip_nonfinite:
            params = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), params, state.params)
            opt_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), opt_state, old_opt_state)
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def make_eval_step(loss_fn: LossFn) -> Callable[[Any, Any, dict], dict]:
    """Summed loss, token count and the loss's other sums (`nll_sum` for the likelihood losses,
    `accuracy_sum`, preference rewards...) on one batch; callers average over batches."""

    def eval_step(params, frozen, batch) -> dict:
        loss_sum, aux = loss_fn(params, frozen, batch, jax.random.key(0))
        sums = {k: v for k, v in aux.items() if k.endswith("_sum")}
        return {**sums, "loss_sum": loss_sum, "tokens": aux["tokens"]}

    return eval_step
