"""llm.generate.panel_matmul: the CPU decode kernel equals a float64 matmul for any rows,
inputs and columns, packing round-trips exactly, larger row counts go to XLA's dot, concurrent
calls in one program finish, and a kernel that cannot be built says why. Its bf16 variant
(llm.generate.panel_bf16) does the same on each bf16 engine the host has, a bf16 model decodes
with it as with XLA's bf16 dots, and hosts without an engine keep XLA's dots."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import tiny_config

from llm.cpu import features
from llm.generate import panel_bf16, panel_matmul
from llm.generate.generator import Generator
from llm.generate.layout import decode_route, pack_kernels
from llm.generate.panel_bf16 import Bf16PanelKernel, pack_bf16, panel_matmul_bf16
from llm.generate.panel_matmul import MAX_INPUT_BYTES, PanelKernel, compile_kernel, pack
from llm.model.build import init_params
from llm.model.kernel import Kernel
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


# ---- the bf16 kernel (llm.generate.panel_bf16): AMX / AVX-512 BF16 over VNNI-paired panels ----

def host_engines() -> list[str]:
    """The bf16 engines this host runs: an AMX CPU also runs the AVX-512 BF16 path."""
    found = features.host_bf16_engine()
    return [] if found is None else [features.AVX512_BF16] + ([features.AMX] if found == features.AMX else [])


@pytest.mark.parametrize("on", [features.AMX, features.AVX512_BF16])
@pytest.mark.parametrize("rows,k,n", [(1, 512, 1536), (16, 512, 1536), (7, 33, 40), (17, 70, 17), (40, 100, 300), (3, 1, 5)])
def test_bf16_kernel_equals_float64_matmul(on, rows, k, n):
    """Rows 1..40 (AMX: full and partial 16-row tiles), K not a multiple of 32, N not a multiple
    of 16, on each engine the host has. Products of bf16 are exact in f32, so against float64 of
    the bf16-rounded operands only f32 summation differs; against the f32 operands the error is
    bf16 rounding."""
    if on not in host_engines():
        pytest.skip(f"this CPU has no {on}")
    rng = np.random.default_rng(rows * 1000 + k + n)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    packed = pack_bf16(jnp.asarray(w), 1)
    assert packed.panels.shape == (-(-n // 16), -(-k // 32) * 16, 32) and packed.panels.dtype == jnp.bfloat16
    got = jax.jit(lambda x, p: panel_matmul_bf16(x, p, on)[:, :n])(x, packed.panels)
    rounded = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16), np.float64)  # noqa: E731
    assert got.shape == (rows, n) and got.dtype == jnp.float32
    assert relative_error(got, rounded(x) @ rounded(w)) < 3e-6
    assert relative_error(got, x.astype(np.float64) @ w) < 2e-2


def test_bf16_pack_round_trips_and_multiplies_over_head_dims():
    rng = np.random.default_rng(0)
    kernel = jnp.asarray(rng.standard_normal((4, 9, 24)), jnp.float32)  # K = 36: padded to 64
    packed = pack_bf16(kernel, 2)
    assert isinstance(packed, Bf16PanelKernel) and packed.shape == (4, 9, 24) and packed.dtype == jnp.bfloat16
    np.testing.assert_array_equal(packed[...], kernel.astype(jnp.bfloat16))
    x = jnp.asarray(rng.standard_normal((2, 3, 4, 9)), jnp.bfloat16)
    got = packed.matmul(x, 2, jnp.bfloat16)  # the kernel where the host has an engine, else XLA
    want = np.einsum("bthd,hdo->bto", np.asarray(x, np.float64), np.asarray(packed[...], np.float64))
    assert got.shape == (2, 3, 24) and relative_error(got, want) < 3e-6


@pytest.mark.parametrize("on", [features.AMX, features.AVX512_BF16])
def test_bf16_independent_calls_in_a_loop_finish_and_agree(on):
    """Like q, k and v in a decode step: calls XLA may run at once on its pool threads, each
    loading (AMX: and releasing) its tile config on every thread it runs on, while YNNPACK's
    bf16 dots (AMX too on such a CPU) run on the same threads in between."""
    if on not in host_engines():
        pytest.skip(f"this CPU has no {on}")
    rng = np.random.default_rng(1)
    plain = [jnp.asarray(rng.standard_normal((64, 64)) / 8, jnp.bfloat16) for _ in range(3)]
    ws = [pack_bf16(w, 1).panels for w in plain]
    x0 = jnp.asarray(rng.standard_normal((16, 64)), jnp.float32)
    xla = lambda x, w: jnp.dot(x.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32)  # noqa: E731

    def run(x, ws, matmul):
        step = lambda i, x: jnp.tanh((sum(matmul(x, w) for w in ws) + xla(x, plain[0])) / 4)  # noqa: E731
        return jax.lax.fori_loop(0, 50, step, x)

    kernel = jax.jit(lambda x, ws: run(x, ws, lambda x, w: panel_matmul_bf16(x, w, on)))(x0, ws)
    reference = jax.jit(lambda x, ws: run(x, ws, xla))(x0, plain)
    np.testing.assert_allclose(kernel, reference, rtol=1e-4, atol=1e-5)


def bf16_model():
    config = tiny_config("precision.compute=bfloat16")
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config, platform="cpu"), rules, 0)
    return graphdef, params


def test_bf16_model_decodes_with_the_bf16_kernel_as_with_xla_bf16_dots(caplog):
    """A bf16 model's generator holds bf16 panels and its decode program calls the bf16 kernel
    (where the host has an engine), logs the route, and decodes greedily the same tokens as
    XLA's bf16 dots on the plain weights."""
    graphdef, params = bf16_model()
    with caplog.at_level(logging.INFO, logger="llm"):
        gen = Generator(graphdef, params)
    route = panel_bf16.engine()
    assert f"CPU decode matmuls: {route or 'XLA'}" in caplog.text
    kernels = [x for x in jax.tree_util.tree_leaves(gen.params, is_leaf=lambda x: isinstance(x, Bf16PanelKernel))
               if isinstance(x, Bf16PanelKernel)]
    assert len(kernels) == (2 * 7 + 1 if route else 0)  # 2 layers x (q, k, v, o, gate, up, down) + head
    xla = Generator(graphdef, params, pack_for_cpu=False)
    prompts = [list(np.random.default_rng(i).integers(1, 256, 5 + 3 * i)) for i in range(3)]
    ours = gen.generate(prompts, max_new_tokens=16)
    theirs = xla.generate(prompts, max_new_tokens=16)
    assert [c.tokens for c in ours] == [c.tokens for c in theirs]


def test_without_a_bf16_engine_bf16_models_keep_xla_dots(monkeypatch, caplog):
    """On a CPU with neither AMX nor AVX-512 BF16 the bf16 kernel is not used: a bf16 model's
    kernels stay plain (XLA's bf16 dots), the route says XLA; f32 models keep the f32 kernel."""
    monkeypatch.setattr(features, "host_bf16_engine", lambda: None)
    panel_bf16.engine.cache_clear()
    try:
        graphdef, params = bf16_model()
        with caplog.at_level(logging.INFO, logger="llm"):
            gen = Generator(graphdef, params)
        assert "CPU decode matmuls: XLA" in caplog.text
        assert not any(isinstance(x, (Bf16PanelKernel, PanelKernel))
                       for x in jax.tree_util.tree_leaves(gen.params, is_leaf=lambda x: isinstance(x, Kernel)))
        assert decode_route(jnp.bfloat16) == "XLA" and decode_route(jnp.float32) == "f32 kernel"
        model, f32_params = tiny_model(scan=False)
        assert isinstance(pack_kernels(model, f32_params)["head"], PanelKernel)
    finally:
        panel_bf16.engine.cache_clear()
