"""llm.generate.sampling on hand-built distributions: which tokens each filter keeps and the
frequencies it samples them with."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.errors import UserError
from llm.generate.sampling import (
    SamplingMode,
    SamplingOptions,
    choose_tokens,
    filtered_logits,
    token_logprobs,
    top_k_mask,
    top_p_mask,
)

# Deliberately unsorted, so the filters must sort: token 1 is the most probable.
PROBS = np.array([0.05, 0.5, 0.15, 0.3])
LOGITS = jnp.asarray(np.log(PROBS)[None, :], jnp.float32)
SAMPLES = 20_000


def kept(masked: jax.Array) -> set[int]:
    return set(np.flatnonzero(np.isfinite(np.asarray(masked[0]))).tolist())


@pytest.mark.parametrize(
    "top_p,expected",
    [(0.3, {1}), (0.5, {1}), (0.7, {1, 3}), (0.79, {1, 3}), (0.9, {1, 3, 2}), (0.97, {0, 1, 2, 3})],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, expected):
    assert kept(top_p_mask(LOGITS, jnp.float32(top_p))) == expected


def test_top_k_keeps_the_k_most_probable():
    assert kept(top_k_mask(LOGITS, 1)) == {1}
    assert kept(top_k_mask(LOGITS, 2)) == {1, 3}
    assert kept(top_k_mask(LOGITS, 4)) == {0, 1, 2, 3}


def sample_frequencies(options: SamplingOptions, logits=LOGITS) -> np.ndarray:
    keys = jax.random.split(jax.random.PRNGKey(0), SAMPLES)
    draw = jax.vmap(
        lambda k: choose_tokens(k, logits, options.mode(), jnp.float32(options.temperature), jnp.float32(options.top_p))[0]
    )
    tokens = np.asarray(jax.jit(draw)(keys))
    return np.bincount(tokens, minlength=logits.shape[-1]) / SAMPLES


def test_top_p_samples_the_renormalised_nucleus():
    freq = sample_frequencies(SamplingOptions(temperature=1.0, top_p=0.7))
    # Nucleus {1, 3}: 0.5 / 0.8 and 0.3 / 0.8; 0.02 is ~6 standard deviations at 20k samples.
    np.testing.assert_allclose(freq, [0.0, 0.625, 0.0, 0.375], atol=0.02)
    assert freq[0] == 0.0 and freq[2] == 0.0


def test_temperature_scales_the_distribution():
    freq = sample_frequencies(SamplingOptions(temperature=2.0))
    expected = PROBS**0.5 / np.sum(PROBS**0.5)
    np.testing.assert_allclose(freq, expected, atol=0.02)


def test_top_k_then_top_p_compose():
    options = SamplingOptions(temperature=1.0, top_k=3, top_p=0.6)
    # top-3 {1, 3, 2} renormalised: 0.526, 0.316, 0.158 -> nucleus for 0.6 is {1, 3}
    masked = filtered_logits(LOGITS, options.mode(), jnp.float32(1.0), jnp.float32(0.6))
    assert kept(masked) == {1, 3}


def test_greedy_and_top_k_1_pick_the_argmax_for_any_key():
    logits = jax.random.normal(jax.random.PRNGKey(1), (8, 300)) * 3
    argmax = np.asarray(jnp.argmax(logits, axis=-1))
    for seed in range(3):
        key = jax.random.PRNGKey(seed)
        greedy = choose_tokens(key, logits, SamplingOptions().mode(), jnp.float32(1.0), jnp.float32(1.0))
        top1 = choose_tokens(key, logits, SamplingMode(False, 1, False), jnp.float32(0.8), jnp.float32(1.0))
        np.testing.assert_array_equal(np.asarray(greedy), argmax)
        np.testing.assert_array_equal(np.asarray(top1), argmax)


def test_same_key_same_tokens_other_key_other_tokens():
    logits = jax.random.normal(jax.random.PRNGKey(1), (64, 300))
    mode = SamplingOptions(temperature=1.0).mode()
    draw = lambda seed: np.asarray(choose_tokens(jax.random.PRNGKey(seed), logits, mode, jnp.float32(1.0), jnp.float32(1.0)))
    np.testing.assert_array_equal(draw(5), draw(5))
    assert np.mean(draw(5) != draw(6)) > 0.5


def test_token_logprobs_are_the_models_log_softmax():
    logp = token_logprobs(LOGITS * 3.0 + 1.0, jnp.asarray([2], jnp.int32))
    expected = np.log(PROBS[2] ** 3 / np.sum(PROBS**3))
    np.testing.assert_allclose(np.asarray(logp), [expected], rtol=1e-6)


def test_mode_holds_only_what_shapes_the_program():
    assert SamplingOptions(temperature=0.0, top_k=5, top_p=0.5).mode() == SamplingMode(True, 0, False)
    assert SamplingOptions(temperature=0.7, top_k=5, top_p=0.5).mode() == SamplingMode(False, 5, True)
    assert SamplingOptions(temperature=0.7, top_p=0.9).mode() == SamplingOptions(temperature=1.3, top_p=0.2).mode()


@pytest.mark.parametrize(
    "options,message",
    [
        (SamplingOptions(temperature=-1.0), "temperature=-1.0 must be >= 0"),
        (SamplingOptions(temperature=float("nan")), "temperature=nan"),
        (SamplingOptions(temperature=1.0, top_k=-1), "top_k=-1"),
        (SamplingOptions(temperature=1.0, top_k=301), "top_k=301"),
        (SamplingOptions(temperature=1.0, top_p=1.5), "top_p=1.5"),
    ],
)
def test_invalid_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        options.validate(vocab_size=300)
