"""The trainable/frozen split in the train step: gradients and optimizer state only for what is
trained, frozen weights untouched, and the compiled LoRA step without the frozen
weight-gradient matmuls."""

import jax
import numpy as np
import optax
import pytest

from helpers import random_batch, tiny_config
from llm.config.loading import load_config
from llm.errors import UserError
from llm.finetune.cost import step_analysis
from llm.finetune.recipe import build_partition, lora_info
from llm.finetune.sft import lm_task
from llm.model.build import init_params
from llm.model.spec import model_spec
from llm.parallel.mesh import build_mesh
from llm.parallel.rules import AxisRules
from llm.peft import lora
from llm.peft.spec import leaf_paths, peft_spec
from llm.peft.split import combine, split_params
from llm.train.setup import build_partitioned_setup, build_setup


def partitioned(config):
    spec = peft_spec(config)
    info = lora_info(config, spec)
    setup, state, frozen = build_partitioned_setup(config, build_partition(config, spec, info, lm_task()), devices=jax.devices()[:1])
    return setup, state, frozen, info


def adam_moments(opt_state):
    return [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]


def test_lora_trains_only_adapters_and_merge_matches_after_training():
    config = tiny_config("peft.lora_rank=4", "data.seq_len=64", "optim.lr=1e-2", "optim.warmup_steps=0")
    setup, state, frozen, info = partitioned(config)
    frozen_before = jax.tree_util.tree_map(np.asarray, frozen)
    paths = leaf_paths(state.params)
    assert paths and all(p.endswith(("/lora_a", "/lora_b")) for p in paths)
    assert not any(p.endswith(("/lora_a", "/lora_b")) for p in leaf_paths(frozen))
    (moments,) = adam_moments(state.opt_state)
    assert leaf_paths(moments.mu) == leaf_paths(moments.nu) == paths  # no optimizer state for frozen weights

    batch = setup.shard_batch(random_batch(256, 8, 64, packed=True))
    loss_fn = setup.partition.loss_fn(setup.graphdef)
    grads = jax.grad(lambda t: loss_fn(t, frozen, batch, jax.random.key(0))[0])(state.params)
    assert leaf_paths(grads) == paths
    losses = []
    for _ in range(3):
        state, metrics = setup.train_step(state, batch, frozen)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    for before, after in zip(jax.tree_util.tree_leaves(frozen_before), jax.tree_util.tree_leaves(frozen)):
        np.testing.assert_array_equal(before, np.asarray(after))  # the base is untouched, bit for bit

    adapted = combine(state.params, frozen)
    base, adapters = lora.unmerge(adapted)
    for before, after in zip(jax.tree_util.tree_leaves(frozen_before), jax.tree_util.tree_leaves(base)):
        np.testing.assert_array_equal(before, np.asarray(after))
    assert max(float(np.abs(np.asarray(b)).max()) for b in jax.tree_util.tree_leaves(adapters)) > 0
    from flax import nnx

    x = (batch["inputs"], batch["positions"], batch["segment_ids"])
    ours = np.asarray(jax.jit(lambda p: nnx.merge(setup.graphdef, p)(*x))(adapted))
    merged = np.asarray(jax.jit(lambda p: nnx.merge(setup.base_graphdef, p)(*x))(lora.merge(adapted, info)))
    np.testing.assert_allclose(merged, ours, rtol=1e-5, atol=1e-5)


def test_freeze_regexes_drop_gradients_and_optimizer_state():
    config = tiny_config("peft.freeze=^embed$,^blocks/0/", "data.seq_len=64")
    setup, state, frozen, _ = partitioned(config)
    trained, fixed = leaf_paths(state.params), leaf_paths(frozen)
    assert "embed" in fixed and all(p.startswith(("embed", "blocks/0/")) for p in fixed)
    assert not any(p.startswith(("embed", "blocks/0/")) for p in trained) and "head" in trained
    (moments,) = adam_moments(state.opt_state)
    assert leaf_paths(moments.mu) == trained
    state, metrics = setup.train_step(state, setup.shard_batch(random_batch(256, 8, 64)), frozen)
    assert np.isfinite(float(metrics["loss"]))


def test_freeze_errors():
    config = tiny_config()
    rules = AxisRules.from_config(config.mesh.rules, build_mesh(config.mesh, jax.devices()[:1]))
    graphdef, params, _ = init_params(model_spec(config, platform="cpu"), rules, 0)
    with pytest.raises(UserError, match=r"peft.freeze regex 'nope' matches no parameter; paths look like blocks/0/"):
        split_params(graphdef, params, peft_spec(tiny_config("peft.freeze=nope")), 0)
    with pytest.raises(UserError, match="freezes every parameter"):
        split_params(graphdef, params, peft_spec(tiny_config("peft.freeze=.*")), 0)
    with pytest.raises(UserError, match="peft.freeze applies to full fine-tuning"):
        peft_spec(tiny_config("peft.freeze=embed", "peft.lora_rank=4"))
    with pytest.raises(UserError, match="peft.quantize='nf4' freezes a quantized base and trains LoRA adapters; set peft.lora_rank > 0"):
        peft_spec(tiny_config("peft.quantize=nf4"))


@pytest.mark.slow
def test_lora_step_for_small_needs_at_most_0_72_of_the_full_step_flops():
    """Frozen kernels get no weight-gradient matmul: forward (2NT) + input gradients (2NT) plus
    the small adapter matmuls, against 6NT for full fine-tuning."""
    config = load_config("configs/small.py", ["train.measure_peak=false"])
    full_setup, full_state = build_setup(config, devices=jax.devices()[:1])
    full = step_analysis(full_setup, full_state, {})
    lora_config = load_config("configs/small.py", ["peft.lora_rank=8", "peft.lora_targets=all_linear"])
    setup, state, frozen, _ = partitioned(lora_config)
    adapted = step_analysis(setup, state, frozen)
    ratio = adapted["step_flops"] / full["step_flops"]
    print(f"small: LoRA step {adapted['step_flops']:.3g} FLOPs vs full {full['step_flops']:.3g}: {ratio:.3f}")
    assert full["step_flops"] > 1e11
    assert ratio <= 0.72


def test_qlora_with_lora_dropout_builds_and_trains():
    """The quantizer inspects the adapted graph, which holds the dropout slots: it must get their
    leaves too (this raised 'Incorrect number of leaves' before)."""
    config = tiny_config("peft.lora_rank=4", "peft.quantize=nf4", "peft.lora_dropout=0.1", "data.seq_len=64",
                         "optim.lr=1e-2", "optim.warmup_steps=0")
    setup, state, frozen, info = partitioned(config)
    assert info.dropout == 0.1 and any(type(x).__name__ == "QTensor" for x in jax.tree_util.tree_leaves(
        frozen, is_leaf=lambda x: type(x).__name__ == "QTensor"))
    state, metrics = setup.train_step(state, setup.shard_batch(random_batch(256, 8, 64, packed=True)), frozen)
    assert np.isfinite(float(metrics["loss"]))
