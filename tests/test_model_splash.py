"""Splash attention (llm.model.splash): on CPU in Pallas' interpreter it equals the XLA path on
packed rows with GQA (values and gradients), alone and under a mesh; shapes the kernel cannot
take are refused in one line; and it compiles for TPU topologies with libtpu (no TPU needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close_at_scale, tiny_config
from llm.config.validate import validate_config
from llm.errors import ConfigError
from llm.model.attention import attend, attention_mask
from llm.model.spec import model_spec
from llm.model.splash import splash_attention
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules

B, T, H, KV, D = 4, 256, 4, 2, 128


def inputs(seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (B, T, H, D))
    k, v = (jax.random.normal(key, (B, T, KV, D)) for key in keys[1:])
    segments = np.ones((B, T), np.int32)
    segments[:, 100:] = 2  # two documents a row; the second starts inside the first's last block
    return q, k, v, jnp.asarray(segments)


def splash_loss(rules):
    return lambda q, k, v, s: (splash_attention(q, k, v, s, rules, block=128, interpret=True) ** 2).sum()


def xla_loss(q, k, v, s):
    return (attend(q, k, v, attention_mask(s, T), "xla") ** 2).sum()


def rules_for(*overrides):
    config = tiny_config(*overrides)
    devices = jax.devices()[: config.mesh.data * config.mesh.tensor]
    return AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, devices))


@pytest.mark.parametrize("mesh", [("mesh.data=1",), ("mesh.data=2", "mesh.tensor=2")])
def test_splash_equals_xla_attention_on_packed_rows(mesh):
    rules = rules_for(*mesh)
    q, k, v, s = inputs()
    ours = splash_attention(q, k, v, s, rules, block=128, interpret=True)
    assert_close_at_scale(np.asarray(ours), np.asarray(attend(q, k, v, attention_mask(s, T), "xla")))
    grads = jax.grad(splash_loss(rules), argnums=(0, 1, 2))(q, k, v, s)
    for a, b in zip(grads, jax.grad(xla_loss, argnums=(0, 1, 2))(q, k, v, s)):
        assert_close_at_scale(np.asarray(a), np.asarray(b))


def test_a_document_never_sees_the_next_one_in_its_row():
    rules = rules_for("mesh.data=1")
    q, k, v, s = inputs()
    changed_k = k.at[:, 100:].add(1.0)
    a = splash_attention(q, k, v, s, rules, block=128, interpret=True)
    b = splash_attention(q, changed_k, v, s, rules, block=128, interpret=True)
    np.testing.assert_array_equal(np.asarray(a[:, :100]), np.asarray(b[:, :100]))
    assert not np.allclose(np.asarray(a[:, 100:]), np.asarray(b[:, 100:]))


@pytest.mark.parametrize("overrides, message", [
    (("model.head_dim=64",), "head_dim that is a multiple of 128, not 64"),
    (("model.head_dim=128", "data.seq_len=192", "model.max_seq_len=256"), "splash blocks are multiples of 128"),
    (("model.head_dim=128", "mesh.sequence=2"), "does not split keys over mesh.sequence"),
])
def test_shapes_the_kernel_cannot_take_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_config("model.attention_impl=splash", *overrides))


def test_splash_off_tpu_is_refused_and_auto_picks_per_platform():
    with pytest.raises(ConfigError, match="splash is a TPU"):
        model_spec(tiny_config("model.attention_impl=splash", "model.head_dim=128"), platform="cpu")
    auto = tiny_config("model.attention_impl=auto", "model.head_dim=128")
    assert {p: model_spec(auto, platform=p).attention_impl for p in ("cpu", "gpu", "tpu")} == {
        "cpu": "blocked", "gpu": "cudnn", "tpu": "splash"}
    assert model_spec(tiny_config("model.attention_impl=auto"), platform="tpu").attention_impl == "xla"  # head_dim 32


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["v5e-8", "v5p-8"])
def test_splash_compiles_for_tpu_topologies(topology):
    from llm.compile.aot import abstract_setup, compile_step, topology_devices
    from llm.config.loading import load_config
    from llm.parallel.topology import parse_topology
    from test_compile_aot import require_libtpu

    require_libtpu()
    config = load_config("configs/tiny.py", ["model.attention_impl=splash", "model.head_dim=128", "mesh.data=-1"])
    devices = topology_devices(parse_topology(topology))
    setup = abstract_setup(config, devices)
    assert setup.spec.attention_impl == "splash"
    result = compile_step(setup)
    assert not result.out_of_memory
    assert "tpu_custom_call" in result.hlo_text  # the Pallas kernel, forward and backward
