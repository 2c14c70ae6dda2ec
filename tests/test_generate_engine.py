"""llm.generate.engine: the cached forward matches the plain forward under left padding, the
decode loop exits early when every row is done, honours its step limit, and inert rows write
nothing."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llm.config.base import base_config
from llm.generate.cached_forward import hidden_states_cached
from llm.generate.engine import Engine
from llm.generate.kv_cache import init_cache
from llm.generate.sampling import SamplingOptions
from llm.model.build import abstract_model, param_shardings
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules

PAD = 0
GREEDY = SamplingOptions().mode()


@functools.lru_cache(maxsize=None)
def build(family: str):
    c = base_config()
    m = c.model
    m.family = family
    m.vocab_size, m.d_model, m.n_layers, m.d_ff, m.max_seq_len = 256, 64, 2, 128, 64
    m.n_heads, m.n_kv_heads = 4, (4 if family == "gpt2" else 2)
    c.data.seq_len = 64
    spec = model_spec(c)
    rules = AxisRules.from_config(c.mesh.rules, build_mesh(c.mesh, jax.devices()[:1]))
    graphdef, abstract = abstract_model(spec, rules)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x, s: jax.device_put(
            (rng.normal(0, 0.1, x.shape) + ("scale" in jax.tree_util.keystr(path))).astype(np.float32), s
        ),
        abstract.to_pure_dict(),
        param_shardings(abstract, spec, rules),
    )
    return graphdef, params, Engine(graphdef, PAD)


def left_pad(prompts: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((len(prompts), width), PAD, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p) :] = p
    return tokens, np.asarray([len(p) for p in prompts], np.int32)


def run_prefill(engine, params, prompts, max_new, stops, new_tokens=16):
    tokens, lens = left_pad(prompts, 16)
    return engine.prefill(
        params, tokens, lens, np.asarray(max_new, np.int32), np.asarray(stops, np.int32)[..., None],
        jax.random.PRNGKey(0), np.float32(1.0), np.float32(1.0), np.float32(1.0),
        mode=GREEDY, new_tokens=new_tokens, return_logprobs=False,
    )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cached_forward_with_left_padding_equals_the_plain_forward(family):
    graphdef, params, _ = build(family)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 256, n).tolist() for n in (3, 11)]
    nxt = np.asarray([[7], [9]], np.int32)
    tokens, lens = left_pad(prompts, 12)
    # The plain forward of prompt + next token, right-padded (causal: padding on the right is inert).
    plain_tokens = np.zeros((2, 12), np.int32)
    for row, prompt in enumerate(prompts):
        plain_tokens[row, : len(prompt) + 1] = prompt + [int(nxt[row, 0])]

    @jax.jit
    def run(params):
        model = nnx.merge(graphdef, params)
        pad = 12 - lens
        kv_valid = jnp.arange(20)[None, :] >= pad[:, None]
        positions = jnp.maximum(jnp.arange(12)[None, :] - pad[:, None], 0)
        hidden, cache = hidden_states_cached(model, tokens, positions, kv_valid, init_cache(model, 2, 20), jnp.int32(0))
        # One more token per row through the cache, at slot 12.
        step, _ = hidden_states_cached(model, nxt, jnp.asarray(lens)[:, None], kv_valid, cache, jnp.int32(12))
        plain = model.hidden_states(plain_tokens, jnp.broadcast_to(jnp.arange(12), (2, 12)))
        return hidden, step, plain

    hidden, step, plain = map(np.asarray, run(params))
    for row, n in enumerate(lens):
        np.testing.assert_allclose(hidden[row, 12 - n :], plain[row, :n], rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(step[row, 0], plain[row, n], rtol=2e-5, atol=2e-5)


def test_decode_exits_early_once_every_row_is_done():
    graphdef, params, engine = build("llama")
    prompts = [[5, 6, 7], [8, 9]]
    free = engine.decode(params, run_prefill(engine, params, prompts, [16, 16], [[-1], [-1]]), np.int32(16), mode=GREEDY)
    free_tokens = np.asarray(free.tokens)
    # Stop each row at its 3rd and 5th token (first occurrences) -> the loop ends at step 5.
    stops = [[int(free_tokens[0, 2])], [int(free_tokens[1, 4])]]
    expect = [list(free_tokens[r]).index(stops[r][0]) + 1 for r in range(2)]
    state = engine.decode(params, run_prefill(engine, params, prompts, [16, 16], stops), np.int32(16), mode=GREEDY)
    assert np.asarray(state.lengths).tolist() == expect
    assert int(state.step) == max(expect) < 16
    assert bool(np.all(np.asarray(state.done)))
    tokens = np.asarray(state.tokens)
    for r in range(2):
        np.testing.assert_array_equal(tokens[r, : expect[r]], free_tokens[r, : expect[r]])
        assert np.all(tokens[r, expect[r] :] == PAD)


def test_decode_stops_at_the_limit_and_resumes_to_the_same_result():
    graphdef, params, engine = build("llama")
    prompts = [[5, 6, 7], [8, 9]]
    one_call = engine.decode(params, run_prefill(engine, params, prompts, [16, 10], [[-1], [-1]]), np.int32(16), mode=GREEDY)
    state = run_prefill(engine, params, prompts, [16, 10], [[-1], [-1]])
    state = engine.decode(params, state, np.int32(6), mode=GREEDY)
    assert int(state.step) == 6 and np.asarray(state.lengths).tolist() == [6, 6]
    state = engine.decode(params, state, np.int32(16), mode=GREEDY)
    np.testing.assert_array_equal(np.asarray(state.tokens), np.asarray(one_call.tokens))
    assert np.asarray(state.lengths).tolist() == [16, 10]


def test_rows_with_no_budget_generate_nothing():
    graphdef, params, engine = build("llama")
    state = run_prefill(engine, params, [[5, 6, 7], [1]], [4, 0], [[-1], [-1]])
    state = engine.decode(params, state, np.int32(16), mode=GREEDY)
    assert np.asarray(state.lengths).tolist() == [4, 0]
    assert np.all(np.asarray(state.tokens)[1] == PAD)
    assert int(state.step) == 4
