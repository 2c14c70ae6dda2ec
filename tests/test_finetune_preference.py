"""The DPO task: packed batches give the unpacked losses and gradients, the adapters-off
reference is the base model computed from the same arrays, and a LoRA DPO step holds one base."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import assert_close_at_scale, assert_trees_close_at_scale, tiny_config
from llm.compile.aot import abstract_setup, compile_step
from llm.data.pair_packing import PairBatches
from llm.data.pairs import TokenPair
from llm.errors import ConfigError
from llm.finetune.preference import adapters_off, dpo_loss_builder, resolve_reference, sequence_sums
from llm.finetune.tasks import partition_for_config
from llm.model.build import init_params
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules
from llm.peft.lora import add_lora
from llm.peft.spec import peft_spec


def dpo_config(*overrides: str):
    return tiny_config("finetune.task=dpo", "data.format=preference", "data.seq_len=64", *overrides)


def model(config):
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config, platform="cpu"), rules, 0)
    return graphdef, params


def pairs(n: int = 6, seed: int = 0) -> list[TokenPair]:
    rng = np.random.default_rng(seed)
    ids = lambda k: rng.integers(1, 250, size=int(k)).astype(np.int32)  # noqa: E731
    return [TokenPair(ids(rng.integers(3, 9)), ids(rng.integers(2, 8)), ids(rng.integers(2, 8)), 0.0, i) for i in range(n)]


def loss_and_grads(config, graphdef, params, batch):
    loss_fn = dpo_loss_builder(config)(graphdef, lambda rng: {}, True)
    (loss_sum, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, {}, batch, jax.random.key(0))
    n = aux["tokens"]
    return loss_sum / n, {k: v / n for k, v in aux.items() if k != "tokens"}, jax.tree_util.tree_map(lambda g: g / n, grads)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "orpo"])
def test_packed_batches_give_the_unpacked_loss_metrics_and_gradients(loss):
    reference = "none" if loss == "orpo" else "precompute"
    data = pairs()
    values = {"ref_logps": np.random.default_rng(1).normal(-20, 3, size=(len(data), 2)).astype(np.float32)} if reference != "none" else None
    results = []
    for per_row, rows in ((3, 2), (1, 6)):  # packed: 3 pairs a row; unpacked: one padded pair a row
        config = dpo_config(f"dpo.loss={loss}", f"dpo.reference={reference}", f"dpo.max_pairs_per_row={per_row}", f"data.batch_size={rows}")
        batches = PairBatches(data, rows=rows, seq_len=64, max_pairs=per_row, layout="policy", seed=0, train=False, values=values)
        batch = next(batches)
        assert sorted(i for row in batches.global_rows(0) for i in row) == list(range(len(data)))
        graphdef, params = model(config)
        results.append(loss_and_grads(config, graphdef, params, {k: jnp.asarray(v) for k, v in batch.items()}))
    (loss_p, metrics_p, grads_p), (loss_u, metrics_u, grads_u) = results
    assert_close_at_scale(loss_p, loss_u)
    for key in metrics_u:
        assert_close_at_scale(metrics_p[key], metrics_u[key], err_msg=key)
    assert_trees_close_at_scale(grads_p, grads_u)
    assert float(jnp.abs(jax.tree_util.tree_leaves(grads_u)[0]).max()) > 0


def lora_model(config):
    graphdef, params = model(config)
    spec = peft_spec(config)
    graphdef_l, params_l, _ = add_lora(graphdef, params, spec, seed=0)
    # Adapters that changed the model (B = 0 at init would make the check trivial).
    params_l = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 if "lora_b" in jax.tree_util.keystr(p) else x, params_l)
    return graphdef, params, graphdef_l, params_l


def test_adapters_off_is_the_base_model_and_the_start_loss_is_log_2():
    config = dpo_config("peft.lora_rank=4", "dpo.max_pairs_per_row=3", "data.batch_size=2")
    graphdef, params, graphdef_l, params_l = lora_model(config)
    batch = {k: jnp.asarray(v) for k, v in next(PairBatches(pairs(), rows=2, seq_len=64, max_pairs=3, layout="policy", seed=0, train=False)).items()}
    base = sequence_sums(nnx.merge(graphdef, params), batch, 6)[0]
    adapted = sequence_sums(nnx.merge(graphdef_l, params_l), batch, 6)[0]
    off = sequence_sums(nnx.merge(graphdef_l, adapters_off(params_l)), batch, 6)[0]
    np.testing.assert_array_equal(np.asarray(off), np.asarray(base))
    assert float(jnp.abs(adapted - base).max()) > 1e-3

    assert resolve_reference(config) == "adapters_off"
    start = jax.tree_util.tree_map_with_path(lambda p, x: jnp.zeros_like(x) if "lora_b" in jax.tree_util.keystr(p) else x, params_l)
    loss_fn = dpo_loss_builder(config)(graphdef_l, lambda rng: {}, True)
    loss_sum, aux = loss_fn(start, {}, batch, jax.random.key(0))
    np.testing.assert_allclose(float(loss_sum / aux["tokens"]), np.log(2), rtol=1e-6)
    assert float(aux["rewards/margins_sum"]) == 0.0


def test_reference_choice_follows_the_method_and_refuses_contradictions():
    assert resolve_reference(dpo_config()) == "precompute"
    assert resolve_reference(dpo_config("peft.lora_rank=4")) == "adapters_off"
    assert resolve_reference(dpo_config("dpo.loss=simpo")) == "none"
    with pytest.raises(ConfigError, match="dpo.loss=simpo has no reference policy but dpo.reference=precompute"):
        resolve_reference(dpo_config("dpo.loss=simpo", "dpo.reference=precompute"))
    with pytest.raises(ConfigError, match="adapters_off needs LoRA"):
        resolve_reference(dpo_config("dpo.reference=adapters_off"))
    with pytest.raises(ConfigError, match="dpo.simpo_gamma=1.0 is read only by dpo.loss=simpo"):
        resolve_reference(dpo_config("dpo.simpo_gamma=1.0"))
    with pytest.raises(ConfigError, match="dpo.beta=0.0 must be a finite number above 0"):
        resolve_reference(dpo_config("dpo.beta=0.0"))


def compiled(config):
    setup = abstract_setup(config, jax.devices()[:1], partition_for_config(config))
    return setup, compile_step(setup)


@pytest.mark.slow
def test_lora_dpo_step_holds_one_base_and_less_memory_than_full_dpo():
    common = ("dpo.max_pairs_per_row=2", "data.batch_size=4", "model.d_model=256", "model.d_ff=768")
    lora_setup, lora = compiled(dpo_config("peft.lora_rank=4", *common))
    _, full = compiled(dpo_config(*common))
    # Every base weight reaches the step once, in the frozen argument; the trained state holds adapters only.
    base_shapes = sorted(x.shape for x in jax.tree_util.tree_leaves(lora_setup.frozen))
    _, full_params = model(dpo_config(*common))
    assert base_shapes == sorted(x.shape for x in jax.tree_util.tree_leaves(full_params))
    state_leaves = jax.tree_util.tree_leaves_with_path(lora_setup.state.params)
    assert state_leaves and all("lora_" in jax.tree_util.keystr(p) for p, _ in state_leaves)
    assert lora.total_bytes < full.total_bytes
    assert lora.frozen_bytes + lora.params_bytes + lora.opt_state_bytes < full.params_bytes + full.opt_state_bytes
