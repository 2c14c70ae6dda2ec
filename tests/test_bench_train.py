"""`llm bench [train]`: our train step and the HF peer measured on the same work. What is
checked is what each side ran (parameter count, batch shape, tokens) and that its timings are
plausible; speeds themselves belong to benchmarks, not tests."""

import math

import pytest

from helpers import tiny_config
from llm.bench.train import run_train_bench


@pytest.mark.slow  # a JAX compile and a PyTorch model at two thread counts
def test_train_bench_measures_ours_and_the_peer_on_the_same_work():
    config = tiny_config("data.seq_len=32", "mesh.data=8")
    steps = 1
    r = run_train_bench(config, steps=steps, vs_hf=True)
    batch, seq_len = config.data.batch_size, config.data.seq_len
    # Same model and the same work on both sides, as each side reports it.
    assert r["params"] == r["hf_params"] > 0
    assert r["batch_shape"] == r["hf_batch_shape"] == [batch, seq_len]
    assert r["tokens"] == r["hf_tokens"] == steps * batch * seq_len
    for key in ("step_time", "hf_step_time"):
        assert 0 < r[key] < 60 and math.isfinite(r[key]), (key, r[key])
    assert 0 < r["mfu"] < 1
    assert r["peak_memory_bytes"] > 4 * r["params"] and math.isfinite(r["loss"])


FAMILY_CONFIGS = ("small_qwen3", "small_gemma3", "small_gemma2")
# The family configs shrunk to a tiny model whose windowed layers (window 8) see less than the
# 32-token test sequence.
TINY = ("model.vocab_size=300", "model.d_model=64", "model.n_heads=4", "model.n_kv_heads=2", "model.d_ff=96",
        "model.sliding_window=8", "model.attention_block=8", "model.loss_chunk=0", "data.seq_len=32",
        "precision.compute=float32")


@pytest.mark.parametrize("name", ("small", *FAMILY_CONFIGS))
def test_hf_peer_of_each_bench_config_is_the_same_architecture(name):
    from llm.bench.hf_peer import hf_model
    from llm.config.loading import load_config
    from llm.interop.hf_config import default_model_type
    from llm.model.spec import model_spec, param_count

    config = load_config(f"configs/{name}.py", [])
    model = hf_model(config)
    spec = model_spec(config)
    ours = param_count(spec) - (spec.padded_vocab - spec.vocab_size) * spec.d_model * (1 if spec.tie_embeddings else 2)
    assert sum(p.numel() for p in model.parameters()) == ours
    assert model.config.model_type == default_model_type(config) == {
        "small": "llama", "small_qwen3": "qwen3", "small_gemma3": "gemma3_text", "small_gemma2": "gemma2"}[name]
    hf_types = getattr(model.config, "layer_types", None) or ["full_attention"] * spec.n_layers
    assert tuple(model.config.sliding_window if t == "sliding_attention" else 0 for t in hf_types) == spec.windows


@pytest.mark.slow  # ~30 s each on 2 shared cores: an 8-layer JAX compile and an export
@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_hf_peer_computes_our_logits(tmp_path, name):
    """Our random weights (every leaf perturbed, norms included) loaded into the peer's
    architecture (hf_config, not the exported config.json) give our f32 logits."""
    import jax
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from interop_models import single_device_rules
    from llm.bench.hf_peer import hf_config
    from llm.config.loading import load_config
    from llm.interop.hf_export import export_hf
    from llm.model.build import init_params
    from llm.model.spec import model_spec

    config = load_config(f"configs/{name}.py", list(TINY))
    graphdef, params, _ = init_params(model_spec(config), single_device_rules(config), seed=0)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    export_hf(config, params, tmp_path / "hf", dtype="float32")
    peer = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", config=hf_config(config), dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, 300, (2, 32))
    ours = np.asarray(jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens))[..., :300]
    with torch.no_grad():
        theirs = peer(input_ids=torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
