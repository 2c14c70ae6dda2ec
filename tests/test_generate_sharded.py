"""Generation with the model sharded over 8 simulated CPU devices (fsdp x tensor, and
data x fsdp x tensor with grouped-query attention and scanned layers) produces the same tokens
and log-probs as on one device, greedy on the first mesh and sampled (top-k + top-p, seeded)
on the second.

Runs in a subprocess so XLA_FLAGS applies before jax starts, whatever else this pytest process
imported first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    from llm.config.base import base_config
    from llm.generate.generator import Generator
    from llm.generate.sampling import SamplingOptions
    from llm.model.build import abstract_model, param_shardings
    from llm.model.spec import model_spec
    from llm.parallel.mesh import build_mesh
    from llm.parallel.rules import AxisRules

    assert jax.device_count() == 8, jax.devices()

    def setup(mesh_sizes, kv_heads, scan):
        c = base_config()
        m = c.model
        m.vocab_size, m.d_model, m.n_layers, m.d_ff, m.max_seq_len = 300, 64, 2, 128, 64
        m.n_heads, m.n_kv_heads, m.scan_layers = 4, kv_heads, scan
        c.data.seq_len = 64
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh_sizes
        return c

    def generator(c, spec, devices, host_params):
        rules = AxisRules.from_config(c.mesh.rules, build_mesh(c.mesh, devices))
        graphdef, abstract = abstract_model(spec, rules)
        shardings = param_shardings(abstract, spec, rules)
        return Generator(graphdef, jax.tree.map(jax.device_put, host_params, shardings))

    results = {}
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 300, n).tolist() for n in (2, 9, 14, 5, 11)]  # 5 rows: batch padding
    cases = [
        ("fsdp2_tensor4", (1, 2, 4), 4, False, SamplingOptions()),
        ("dp2_fsdp2_tp2_gqa_scan", (2, 2, 2), 2, True, SamplingOptions(temperature=1.0, top_k=40, top_p=0.9)),
    ]
    for name, sizes, kv, scan, options in cases:
        c = setup(sizes, kv, scan)
        mesh = build_mesh(c.mesh)
        spec = model_spec(c, vocab_shards=AxisRules.from_config(c.mesh.rules, mesh).shards("vocab"))
        rules = AxisRules.from_config(c.mesh.rules, mesh)
        graphdef, abstract = abstract_model(spec, rules)
        host = jax.tree_util.tree_map_with_path(
            lambda path, x: (rng.normal(0, 0.1, x.shape) + ("scale" in jax.tree_util.keystr(path))).astype(np.float32),
            abstract.to_pure_dict(),
        )
        sharded = generator(c, spec, jax.devices(), host)
        c1 = setup((1, 1, 1), kv, scan)
        single = generator(c1, spec, jax.devices()[:1], host)
        assert sharded.params["embed"].sharding.num_devices == 8
        kw = dict(max_new_tokens=[12, 5, 12, 8, 10], options=options, seed=3, return_logprobs=True)
        a = sharded.generate(prompts, **kw)
        b = single.generate(prompts, **kw)
        tokens, lens, new, stops, n = sharded._inputs(prompts, [4] * 5, [[]] * 5)
        state = sharded.engine.prefill(
            sharded.params, tokens, lens, new, stops, jax.random.PRNGKey(0), np.float32(1), np.float32(1), np.float32(1),
            mode=SamplingOptions().mode(), new_tokens=n, return_logprobs=False,
        )
        k_cache = state.cache["k"][0] if scan else state.cache["k"][0][0]  # block 0 (the prompt), layer 0
        results[name] = {
            "cache_spec": [list(a) if isinstance(a, tuple) else a for a in k_cache.sharding.spec],
            "same_tokens": [x.tokens for x in a] == [x.tokens for x in b],
            "max_logprob_rel": max(
                float(np.max(np.abs(np.subtract(x.logprobs, y.logprobs)) / np.abs(y.logprobs))) for x, y in zip(a, b)
            ),
            "lengths": [len(x.tokens) for x in a],
        }
    print("RESULT " + json.dumps(results))
    """
)


@pytest.mark.slow
def test_sharded_generation_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    results = json.loads(line[len("RESULT ") :])
    assert set(results) == {"fsdp2_tensor4", "dp2_fsdp2_tp2_gqa_scan"}
    # The KV cache is split over the batch shards and, by kv head, over `tensor`.
    assert results["fsdp2_tensor4"]["cache_spec"][:2] == ["fsdp", "tensor"]
    assert results["dp2_fsdp2_tp2_gqa_scan"]["cache_spec"][:3] == [None, ["data", "fsdp"], "tensor"]
    for name, r in results.items():
        assert r["same_tokens"], (name, r)
        assert r["max_logprob_rel"] < 1e-5, (name, r)
        assert r["lengths"] == [12, 5, 12, 8, 10], (name, r)
