"""Per-segment target log-probs: equal to the full logits' log-softmax, the same packed as
unpacked, the same chunked as not, and never holding the full logits in the gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import assert_close_at_scale, assert_trees_close_at_scale, tiny_config
from llm.data.batch import empty_batch
from llm.errors import UserError
from llm.model.build import abstract_model, init_params
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules
from llm.rl.logprobs import check_segments, chunked_target_logprobs, sequence_logprobs

VOCAB, T = 250, 32  # 250 pads to 256 columns: the padded ones must never be predicted
SMALL = ("model.d_model=32", "model.d_ff=64", f"model.vocab_size={VOCAB}", f"data.seq_len={T}")


def build(chunk: int, tied: bool = False):
    """(graphdef, params) of the small model with model.loss_chunk=chunk; the parameters do not
    depend on the chunk, so each head layout is initialised once for the whole file."""
    config = tiny_config(*SMALL, f"model.loss_chunk={chunk}", f"model.tie_embeddings={tied}")
    spec = model_spec(config, platform="cpu")
    graphdef, _ = abstract_model(spec, _rules(), seed=0)
    return graphdef, _params(tied)


@functools.cache
def _rules() -> AxisRules:
    config = tiny_config(*SMALL)
    return AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))


@functools.cache
def _params(tied: bool):
    spec = model_spec(tiny_config(*SMALL, f"model.tie_embeddings={tied}"), platform="cpu")
    return init_params(spec, _rules(), seed=0)[1]


def pack(rows: list[list[np.ndarray]], seed: int = 0) -> dict:
    """A batch with each row holding its sequences (token arrays, inputs + final target) one
    after another as segments 1, 2, ...; random loss-mask holes, zero-padded to T."""
    rng = np.random.default_rng(seed)
    batch = empty_batch((len(rows), T))
    for r, seqs in enumerate(rows):
        at = 0
        for s, tokens in enumerate(seqs, start=1):
            n = len(tokens) - 1
            batch["inputs"][r, at : at + n] = tokens[:-1]
            batch["targets"][r, at : at + n] = tokens[1:]
            batch["segment_ids"][r, at : at + n] = s
            batch["positions"][r, at : at + n] = np.arange(n)
            batch["loss_mask"][r, at : at + n] = rng.random(n) < 0.7  # a prompt-like gap in the mask
            at += n
    return {k: jnp.asarray(v) for k, v in batch.items()}


def sequences(seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, n + 1).astype(np.int32) for n in (12, 16, 20, 12)]


def reference(graphdef, params, batch, max_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment sums from the model's full logits and jax.nn.log_softmax, summed in f64."""
    logits = nnx.merge(graphdef, params)(batch["inputs"], batch["positions"], batch["segment_ids"])
    logp = np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), batch["targets"][..., None], axis=-1)[..., 0], np.float64)
    seg, mask = np.asarray(batch["segment_ids"]), np.asarray(batch["loss_mask"], np.float64)
    sums = np.stack([[(logp[b] * mask[b])[seg[b] == s].sum() for s in range(1, max_segments + 1)] for b in range(len(seg))])
    counts = np.stack([[mask[b][seg[b] == s].sum() for s in range(1, max_segments + 1)] for b in range(len(seg))])
    return sums, counts


def sums_fn(graphdef, max_segments: int):
    return jax.jit(lambda params, batch: sequence_logprobs(nnx.merge(graphdef, params), batch, max_segments))


@pytest.mark.parametrize("chunk", [0, 8])
def test_segment_sums_equal_the_full_logits_log_softmax(chunk):
    a, b, c, d = sequences()
    batch = pack([[a, b], [c, d]])
    graphdef, params = build(chunk)
    sums, counts = sums_fn(graphdef, 3)(params, batch)  # a third, empty column stays zero
    ref_sums, ref_counts = reference(graphdef, params, batch, 3)
    assert_close_at_scale(sums, ref_sums)
    np.testing.assert_array_equal(counts, ref_counts)
    assert sums.dtype == jnp.float32 and np.all(ref_counts[:, :2] > 0) and np.all(np.asarray(sums)[:, 2] == 0)


def dpo_like(sums, counts):
    """A nonlinear function of per-sequence sums and means (in sequence order a, b, c, d)."""
    margins = sums[0::2] - sums[1::2]
    return -jax.nn.log_sigmoid(0.1 * margins).sum() + 0.01 * jnp.square(sums / counts).sum()


def test_packed_rows_equal_unpacked_rows():
    """Two sequences per row give each sequence the sums and gradients it gets alone in a row."""
    a, b, c, d = sequences()
    graphdef, params = build(chunk=8)
    packed, unpacked = pack([[a, b], [c, d]]), pack([[a], [b], [c], [d]])
    # the same loss-mask holes: pack draws them per row, so copy the packed mask across
    holes = [np.asarray(packed["loss_mask"])[r][np.asarray(packed["segment_ids"])[r] == s] for r in (0, 1) for s in (1, 2)]
    unpacked["loss_mask"] = jnp.asarray(np.stack([np.pad(h, (0, T - len(h))) for h in holes]))

    def loss(params, batch, max_segments):
        sums, counts = sequence_logprobs(nnx.merge(graphdef, params), batch, max_segments)
        return dpo_like(sums.reshape(-1), counts.reshape(-1)), (sums.reshape(-1), counts.reshape(-1))

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
    (packed_loss, (packed_sums, packed_counts)), packed_grads = grad(params, packed, 2)
    (loss_alone, (sums_alone, counts_alone)), grads_alone = grad(params, unpacked, 1)
    np.testing.assert_array_equal(packed_counts, counts_alone)
    assert_close_at_scale(packed_sums, sums_alone)
    assert_close_at_scale(packed_loss, loss_alone)
    assert_trees_close_at_scale(packed_grads, grads_alone)


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_gradients_equal_unchunked(tied):
    """The chunked backward (recomputed logits, custom VJP) gives autodiff's gradients through
    the full logits, with the head tied to the embedding or not."""
    a, b, c, d = sequences()
    batch = pack([[a, b], [c, d]])

    def grads(chunk):
        graphdef, params = build(chunk, tied)

        def loss(params):
            sums, counts = sequence_logprobs(nnx.merge(graphdef, params), batch, 2)
            return dpo_like(sums.reshape(-1), counts.reshape(-1))

        return jax.jit(jax.grad(loss))(params)

    assert_trees_close_at_scale(grads(8), grads(0))


def test_gradient_never_holds_the_full_logits():
    """value_and_grad of the chunked log-probs compiles to temporaries well under one f32
    (batch, length, vocab) tensor, while the unchunked program holds at least one."""
    b, t, d, v = 2, 256, 32, 4096
    logits_bytes = b * t * v * 4

    def temp_bytes(chunk):
        def f(h, w, y, g):
            return (chunked_target_logprobs(h, w, y, vocab_size=v, chunk=chunk) * g).sum()

        args = (jax.ShapeDtypeStruct((b, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
                jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.float32))
        compiled = jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(t) >= logits_bytes
    assert temp_bytes(32) < logits_bytes / 2


def test_bad_chunk_and_segment_ids_are_user_errors():
    h, w, y = jnp.zeros((1, 12, 4)), jnp.zeros((4, 8)), jnp.zeros((1, 12), jnp.int32)
    with pytest.raises(UserError, match="loss chunk 5 does not divide the batch length 12"):
        chunked_target_logprobs(h, w, y, vocab_size=8, chunk=5)
    check_segments(np.array([[1, 1, 2, 0]]), 2)
    with pytest.raises(UserError, match="segment ids run from 0 to 3 but must lie in 0..max_segments=2"):
        check_segments(np.array([[1, 2, 3, 0]]), 2)


@pytest.mark.parametrize("chunk", [0, 8])
def test_temperature_scales_the_logits_chunked_or_not_with_matching_gradients(chunk):
    """RL's training forward at the sampling temperature: log_softmax(logits / T), and the
    chunked path (which scales the head) has the unchunked path's gradients."""
    from llm.rl.logprobs import token_logprobs

    a, b, c, d = sequences()
    batch = pack([[a, b], [c, d]])
    graphdef, params = build(chunk)
    temp = 0.7

    def lp(p, chunked_graphdef):
        model = nnx.merge(chunked_graphdef, p)
        hidden = model.hidden_states(batch["inputs"], batch["positions"], batch["segment_ids"])
        return token_logprobs(model, hidden, batch["targets"], temperature=temp)

    logits = nnx.merge(graphdef, params)(batch["inputs"], batch["positions"], batch["segment_ids"])
    want = jnp.take_along_axis(jax.nn.log_softmax(logits / temp, axis=-1), batch["targets"][..., None], axis=-1)[..., 0]
    assert_close_at_scale(jax.jit(lambda p: lp(p, graphdef))(params), want)
    unchunked, _ = build(0)
    loss = lambda g: jax.grad(lambda p: jnp.sum(lp(p, g) * batch["loss_mask"]))(params)  # noqa: E731
    assert_trees_close_at_scale(jax.jit(lambda p: loss(graphdef))(params), jax.jit(lambda p: loss(unchunked))(params))


def test_chunked_logprobs_apply_the_final_softcap_and_its_gradient():
    """Gemma 2's final soft-cap: the chunked forward caps the logits and its recomputing
    backward multiplies by the cap's slope, as autodiff through the capped full logits does."""
    keys = jax.random.split(jax.random.key(0), 4)
    h = jax.random.normal(keys[0], (2, 16, 8))
    w = jax.random.normal(keys[1], (8, 24)) * 3.0  # logits well into tanh's bend
    y = jax.random.randint(keys[2], (2, 16), 0, 20)
    g = jax.random.normal(keys[3], (2, 16))
    cap = 2.0

    def reference(h, w):
        logits = jnp.tanh((h @ w) / cap) * cap
        logits = jnp.where(jnp.arange(24) < 20, logits, -1e30)
        return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), y[..., None], axis=-1)[..., 0]

    ours = lambda h, w: chunked_target_logprobs(h, w, y, vocab_size=20, chunk=4, softcap_at=cap)  # noqa: E731
    assert_close_at_scale(ours(h, w), reference(h, w))
    got = jax.grad(lambda h, w: (ours(h, w) * g).sum(), argnums=(0, 1))(h, w)
    want = jax.grad(lambda h, w: (reference(h, w) * g).sum(), argnums=(0, 1))(h, w)
    assert_trees_close_at_scale(got, want)
    uncapped = chunked_target_logprobs(h, w, y, vocab_size=20, chunk=4)
    assert float(jnp.abs(uncapped - ours(h, w)).max()) > 0.1  # the cap matters here
