"""precision.optimizer_state: both Adam moments are stored in the chosen dtype (optax's mu_dtype
alone covers only the first), and the state layout is the same for either dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm.config.base import base_config
from llm.train.optimizer import build_optimizer


def adam_state(state):
    found = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("name,dtype", [("float32", jnp.float32), ("bfloat16", jnp.bfloat16)])
def test_both_moments_are_stored_in_the_state_dtype(name, dtype):
    optimizer, _ = build_optimizer(base_config().optim, 10, name)
    params = {"w": jnp.ones((4, 8), jnp.float32), "scale": jnp.ones((8,), jnp.float32)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    state = optimizer.init(params)
    for _ in range(2):  # the dtype holds after updates too, not only at init
        updates, state = jax.jit(optimizer.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
        adam = adam_state(state)
        for moment in (adam.mu, adam.nu):
            assert {leaf.dtype for leaf in jax.tree.leaves(moment)} == {jnp.dtype(dtype)}
        assert {leaf.dtype for leaf in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}


def test_bfloat16_state_keeps_the_layout_and_close_updates():
    config = base_config().optim
    params = {"w": jnp.linspace(-1.0, 1.0, 32, dtype=jnp.float32).reshape(4, 8)}
    grads = {"w": jnp.linspace(0.5, -0.25, 32, dtype=jnp.float32).reshape(4, 8)}
    results = {}
    for name in ("float32", "bfloat16"):
        optimizer, _ = build_optimizer(config, 10, name)
        state = optimizer.init(params)
        updates, state = optimizer.update(grads, state, params)
        updates, state = optimizer.update(grads, state, params)
        results[name] = (jax.tree.structure(state), np.asarray(updates["w"]))
    assert results["float32"][0] == results["bfloat16"][0]
    ref = results["float32"][1]
    # bf16 keeps 8 bits of mantissa: moments rounded to 2**-8 relative give updates within ~1%.
    np.testing.assert_allclose(results["bfloat16"][1], ref, rtol=0, atol=1e-2 * np.abs(ref).max())


@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clipped, and left alone
def test_clip_by_global_norm_matches_optax(max_norm):
    from llm.train.optimizer import clip_by_global_norm, global_norm

    keys = jax.random.split(jax.random.key(3), 3)
    tree = {"w": jax.random.normal(keys[0], (37, 5)), "b": jax.random.normal(keys[1], (5,)), "s": jax.random.normal(keys[2], ())}
    np.testing.assert_allclose(global_norm(tree), optax.tree.norm(tree), rtol=1e-6)
    ours, _ = clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
    theirs, _ = optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
    for key in tree:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6)
    assert (global_norm(ours) < max_norm + 1e-4) and (max_norm > 1 or global_norm(ours) > max_norm - 1e-4)
