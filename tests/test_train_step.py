"""The pure train step: sharding-invariant losses, gradient accumulation, NaN handling,
optimizer masks and schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_trees_close_at_scale, random_batch, tiny_config
from llm.model.build import init_params
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules
from llm.train.loss import lm_loss_fn
from llm.train.optimizer import learning_rate_schedule, weight_decay_mask
from llm.train.setup import build_setup


def run_steps(config, devices, batches):
    setup, state = build_setup(config, devices=devices)
    losses = []
    for batch in batches:
        state, metrics = setup.train_step(state, setup.shard_batch(batch), {})
        losses.append(float(metrics["loss"]))
    return setup, state, losses


MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]


def test_same_losses_on_every_mesh_and_shardings_follow_the_rules():
    batches = [random_batch(256, 8, 64, seed=s, packed=True) for s in range(3)]
    reference = None
    for data, fsdp, tensor in MESHES:
        config = tiny_config(f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}", "data.seq_len=64")
        devices = jax.devices()[: data * fsdp * tensor]
        setup, state, losses = run_steps(config, devices, batches)
        if reference is None:
            reference = losses
        np.testing.assert_allclose(losses, reference, rtol=1e-5)
        mesh = dict(setup.mesh.shape)
        expect = lambda *axes: tuple(a for a in axes if a is None or mesh[a] > 1)  # noqa: E731
        q = state.params["blocks"][0]["attn"]["q"]["kernel"].sharding.spec
        assert tuple(q) == expect("fsdp" if fsdp > 1 else None, "tensor" if tensor > 1 else None, None)[: len(tuple(q))]
        embed = state.params["embed"].sharding.spec
        assert tuple(embed) == ("tensor" if tensor > 1 else None, "fsdp" if fsdp > 1 else None)[: len(tuple(embed))]
        down = state.params["blocks"][1]["mlp"]["down"]["kernel"].sharding.spec
        assert tuple(down) == ("tensor" if tensor > 1 else None, "fsdp" if fsdp > 1 else None)[: len(tuple(down))]
        # Adam moments live where their parameters live.
        mu = state.opt_state[1][0].mu["blocks"][1]["mlp"]["down"]["kernel"]
        assert mu.sharding.spec == state.params["blocks"][1]["mlp"]["down"]["kernel"].sharding.spec


def test_gradient_accumulation_equals_the_big_batch():
    batches = [random_batch(256, 8, 64, seed=s, packed=True) for s in range(2)]
    for b in batches:  # uneven token counts per micro-batch: the token-weighted mean must still match
        b["loss_mask"][:2, 40:] = 0.0
    devices = jax.devices()[:2]
    base = ("mesh.data=2", "data.seq_len=64")
    _, big, big_losses = run_steps(tiny_config(*base), devices, batches)
    _, acc, acc_losses = run_steps(tiny_config(*base, "train.grad_accum=4"), devices, batches)
    np.testing.assert_allclose(acc_losses, big_losses, rtol=1e-5)
    assert_trees_close_at_scale(acc.params, big.params)


def test_nonfinite_step_is_skipped_under_the_skip_policy():
    config = tiny_config("train.nan_policy=skip", "data.seq_len=32")
    setup, state = build_setup(config, devices=jax.devices()[:1])
    state, _ = setup.train_step(state, setup.shard_batch(random_batch(256, 8, 32)), {})
    before = jax.device_get(state.params)
    bad = random_batch(256, 8, 32)
    bad["loss_mask"][0, 0] = np.nan
    state, metrics = setup.train_step(state, setup.shard_batch(bad), {})
    assert not bool(metrics["finite"])
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(jax.device_get(state.params))):
        np.testing.assert_array_equal(a, b)
    assert int(state.step) == 2


def test_weight_decay_skips_norms_biases_and_embeddings():
    config = tiny_config("model.qkv_bias=true")
    setup, state = build_setup(config, devices=jax.devices()[:1])
    mask = weight_decay_mask(state.params)
    assert mask["embed"] is False and mask["final_norm"]["scale"] is False
    assert mask["blocks"][0]["attn"]["q"]["bias"] is False
    assert mask["blocks"][0]["attn"]["q"]["kernel"] is True and mask["head"] is True


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_schedule_warms_up_then_decays(decay):
    config = tiny_config(f"optim.decay={decay}", "optim.lr=1.0", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1")
    schedule = learning_rate_schedule(config.optim, 110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    end = float(schedule(110))
    assert end == pytest.approx(1.0 if decay == "constant" else 0.1, rel=1e-5)


def test_z_loss_adds_the_squared_log_partition():
    from llm.train.loss import cross_entropy_sums

    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 7)), jnp.float32)
    targets = jnp.zeros((2, 5), jnp.int32)
    mask = jnp.ones((2, 5))
    total0, nll0, count = cross_entropy_sums(logits, targets, mask)
    total1, nll1, _ = cross_entropy_sums(logits, targets, mask, z_loss=1e-2)
    lse = jax.nn.logsumexp(logits, axis=-1)
    np.testing.assert_allclose(total1 - total0, 1e-2 * (lse**2).sum(), rtol=1e-5)
    assert float(nll0) == float(nll1) and float(count) == 10


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_loss_changes_memory_not_results(tied):
    """model.loss_chunk only reorders the work: the same loss and gradients (z-loss, a loss mask
    and a vocabulary padded past the tokenizer's included), with the head tied or not."""
    batch = {k: jnp.asarray(v) for k, v in random_batch(250, 4, 64, packed=True).items()}
    batch["loss_mask"] = batch["loss_mask"].at[:, 50:].set(0.0)
    results = []
    for chunk in (0, 16):
        config = tiny_config("data.seq_len=64", "model.vocab_size=250", f"model.tie_embeddings={tied}", f"model.loss_chunk={chunk}")
        spec = model_spec(config, platform="cpu")
        rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
        graphdef, params, _ = init_params(spec, rules, seed=0)
        loss_fn = lm_loss_fn(graphdef, z_loss=1e-3)
        (total, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, {}, batch, None)
        results.append((total, aux, grads))
    (total, aux, grads), (lean_total, lean_aux, lean_grads) = results
    np.testing.assert_allclose(lean_total, total, rtol=1e-6)
    np.testing.assert_allclose(lean_aux["nll_sum"], aux["nll_sum"], rtol=1e-6)
    assert float(lean_aux["tokens"]) == float(aux["tokens"])
    for a, b in zip(jax.tree_util.tree_leaves(lean_grads), jax.tree_util.tree_leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.abs(b).max()))


def test_chunked_loss_holds_less_memory():
    """The compiled step's temporaries shrink where the logits dominate."""
    base = ("data.seq_len=256", "data.batch_size=4", "model.vocab_size=4096")

    def temp_bytes(*extra):
        setup, state = build_setup(tiny_config(*base, *extra), devices=jax.devices()[:1])
        abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        batch = setup.shard_batch(random_batch(4096, 4, 256, packed=True))
        return setup.train_step.lower(abstract, batch, {}).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = 4 * 256 * 4096 * 4  # one f32 (batch, length, vocab) tensor
    assert temp_bytes() - temp_bytes("model.loss_chunk=64") > 0.5 * logits_bytes
