"""llm.generate.panel_matmul: the CPU decode kernel equals a float64 matmul for any rows,
inputs and columns, packing round-trips exactly, larger row counts go to XLA's dot, concurrent
calls in one program finish, and a kernel that cannot be built says why."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import tiny_config

from llm.generate import panel_matmul
from llm.generate.layout import pack_kernels
from llm.generate.panel_matmul import MAX_INPUT_BYTES, PanelKernel, compile_kernel, pack
from llm.model.build import init_params
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the kernel is the CPU decode path")


def relative_error(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("rows,k,n", [(1, 512, 1536), (16, 512, 1536), (7, 33, 40), (13, 1, 16), (6, 64, 8), (64, 96, 17), (11, 200, 300)])
def test_kernel_equals_float64_matmul(rows, k, n):
    assert panel_matmul.available()
    rng = np.random.default_rng(rows * 1000 + k + n)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    packed = pack(jnp.asarray(w), 1)
    assert packed.panels.shape == (-(-n // 16), k, 16)
    got = jax.jit(lambda x, p: p.matmul(x, 1, jnp.float32))(x, packed)
    assert got.shape == (rows, n)
    assert relative_error(got, x.astype(np.float64) @ w) < 3e-6


def test_pack_round_trips_and_multiplies_over_head_dims():
    """An attention output kernel (heads, head_dim, d_model) packs with two input dims; `[...]`
    gives back the very same array and matmul equals the einsum over both input dims."""
    rng = np.random.default_rng(0)
    kernel = jnp.asarray(rng.standard_normal((4, 8, 24)), jnp.float32)
    packed = pack(kernel, 2)
    assert packed.shape == (4, 8, 24) and packed.ndim == 3 and packed.size == kernel.size
    np.testing.assert_array_equal(packed[...], kernel)
    x = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    got = packed.matmul(jnp.asarray(x), 2, jnp.float32)
    want = np.einsum("bthd,hdo->bto", x.astype(np.float64), np.asarray(kernel, np.float64))
    assert got.shape == (2, 3, 24) and relative_error(got, want) < 3e-6
    with pytest.raises(ValueError, match="2 input dims"):
        packed.matmul(jnp.asarray(x), 1, jnp.float32)


@pytest.mark.parametrize("rows", [MAX_INPUT_BYTES // 128, MAX_INPUT_BYTES // 128 + 1])
def test_kernel_up_to_max_input_bytes_xla_dot_beyond(rows):
    """Inputs too large to stay in cache (a long prefill) multiply the unpacked kernel with
    XLA's dot; smaller ones call the kernel. Both give the matmul."""
    rng = np.random.default_rng(rows)
    w = jnp.asarray(rng.standard_normal((32, 48)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((rows, 32)), jnp.float32)
    packed = pack(w, 1)
    program = str(jax.make_jaxpr(lambda x, p: p.matmul(x, 1, jnp.float32))(x, packed))
    assert ("ffi_call" in program) == (rows * 32 * 4 <= MAX_INPUT_BYTES)
    assert relative_error(packed.matmul(x, 1, jnp.float32), np.asarray(x, np.float64) @ np.asarray(w)) < 3e-6


def test_independent_calls_in_a_loop_finish_and_agree():
    """Like q, k and v in a decode step: independent kernel calls that XLA may run at once on
    its two-thread pool, each also scheduling work on that pool, inside a while loop."""
    rng = np.random.default_rng(1)
    ws = [pack(jnp.asarray(rng.standard_normal((64, 64)) / 8, jnp.float32), 1) for _ in range(3)]
    x0 = jnp.asarray(rng.standard_normal((16, 64)), jnp.float32)

    def step(x, ws, matmul):
        return sum(matmul(x, w) for w in ws) / 3

    def run(x, ws, matmul):
        return jax.lax.fori_loop(0, 50, lambda i, x: jnp.tanh(step(x, ws, matmul)), x)

    kernel = jax.jit(lambda x, ws: run(x, ws, lambda x, w: w.matmul(x, 1, jnp.float32)))(x0, ws)
    plain = [w[...] for w in ws]
    reference = jax.jit(lambda x, ws: run(x, ws, lambda x, w: x @ w))(x0, plain)
    np.testing.assert_allclose(kernel, reference, rtol=1e-4, atol=1e-5)


def test_a_kernel_that_cannot_be_built_says_why(tmp_path):
    with pytest.raises(RuntimeError, match="could not run"):
        compile_kernel(compiler=str(tmp_path / "no-such-compiler"), directory=tmp_path)
    with pytest.raises(RuntimeError, match="'false' failed on panel_matmul.cc"):
        compile_kernel(compiler="false", directory=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial library left behind


def test_built_kernel_is_cached_by_source_jaxlib_and_flags(tmp_path):
    first = compile_kernel(directory=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert compile_kernel(directory=tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def tiny_model(scan: bool):
    """(model, params as a pure dict) of the tiny config (llama, untied head)."""
    config = tiny_config(f"model.scan_layers={str(scan).lower()}")
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config, platform="cpu"), rules, 0)
    return nnx.merge(graphdef, params), params


def test_pack_kernels_leaves_what_the_kernel_cannot_take(monkeypatch):
    """Every Dense kernel and the head are packed with the input dims of their layer; bf16
    kernels and a scanned layer stack stay plain; without the kernel nothing is packed."""
    model, params = tiny_model(scan=False)
    params = {**params, "blocks": {**params["blocks"], 0: {**params["blocks"][0], "mlp": {
        **params["blocks"][0]["mlp"], "down": {"kernel": params["blocks"][0]["mlp"]["down"]["kernel"].astype(jnp.bfloat16)}}}}}
    packed = pack_kernels(model, params)
    assert isinstance(packed["head"], PanelKernel) and isinstance(packed["blocks"][0]["mlp"]["up"]["kernel"], PanelKernel)
    assert packed["blocks"][0]["mlp"]["down"]["kernel"].dtype == jnp.bfloat16
    o = packed["blocks"][1]["attn"]["o"]["kernel"]
    assert isinstance(o, PanelKernel) and o.n_in == 2 and o.shape == params["blocks"][1]["attn"]["o"]["kernel"].shape
    scanned_model, scanned = tiny_model(scan=True)
    kept = pack_kernels(scanned_model, scanned)["blocks"]
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(kept), jax.tree_util.tree_leaves(scanned["blocks"])))
    monkeypatch.setattr(panel_matmul, "available", lambda: False)
    assert pack_kernels(model, params) is params
