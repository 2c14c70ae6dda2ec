"""The peer we compare training speed against: Hugging Face transformers on PyTorch, same
model shape, batch and optimizer (f32 on CPU, its fastest CPU mode; bf16 autocast on a GPU)."""

from __future__ import annotations

import os
import time
from typing import Any

import jax

from llm.model.spec import ModelSpec


def params_as_hf_counts(spec: ModelSpec, params: Any) -> int:
    """Our parameter count without the vocabulary padding (rows the tokenizer never uses), which
    the transformers model does not have: equal to its count when both are the same model."""
    total = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
    return total - (spec.padded_vocab - spec.vocab_size) * spec.d_model * (1 if spec.tie_embeddings else 2)


def hf_config(spec: ModelSpec):
    """The transformers config with the same shape as our model."""
    import transformers

    if spec.is_gpt2:
        return transformers.GPT2Config(
            vocab_size=spec.vocab_size, n_positions=spec.max_seq_len, n_embd=spec.d_model,
            n_layer=spec.n_layers, n_head=spec.n_heads, n_inner=spec.d_ff,
            layer_norm_epsilon=spec.norm_eps, tie_word_embeddings=spec.tie_embeddings,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
    return transformers.LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.d_model, intermediate_size=spec.d_ff,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads, head_dim=spec.head_dim,
        max_position_embeddings=spec.max_seq_len, rms_norm_eps=spec.norm_eps,
        rope_theta=spec.rope_theta, attention_bias=spec.qkv_bias,
        tie_word_embeddings=spec.tie_embeddings,
    )


def bench_hf_train(spec: ModelSpec, batch_size: int, seq_len: int, steps: int, warmup: int = 2, seed: int = 0) -> dict:
    """The peer at its best: on CPU, time it with 1 thread and with all cores and keep the faster
    (on a loaded machine PyTorch with fewer threads can be several times faster)."""
    import torch

    if torch.cuda.is_available():
        return _bench_hf_train(spec, batch_size, seq_len, steps, warmup, seed, threads=None)
    runs = [_bench_hf_train(spec, batch_size, seq_len, steps, warmup, seed, threads=t)
            for t in sorted({1, os.cpu_count() or 1})]
    return max(runs, key=lambda r: r["hf_tokens_per_s"])


def _bench_hf_train(spec: ModelSpec, batch_size: int, seq_len: int, steps: int, warmup: int, seed: int, threads: int | None) -> dict:
    """Time `steps` AdamW steps of the transformers model: tokens/s, step time, and the batch
    shape, parameter count and tokens it really ran."""
    import torch
    import transformers

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = transformers.AutoModelForCausalLM.from_config(hf_config(spec), attn_implementation="sdpa").to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=cuda)
    tokens = torch.randint(0, spec.vocab_size, (batch_size, seq_len + 1), device=device)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]

    def step():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss.detach())
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "hf_batch_shape": list(inputs.shape),
        "hf_params": sum(p.numel() for p in model.parameters()),
        "hf_tokens": steps * inputs.numel(),
        "hf_tokens_per_s": steps * inputs.numel() / elapsed,
        "hf_step_time": elapsed / steps,
        "hf_dtype": "bfloat16 autocast" if cuda else "float32",
        "hf_threads": threads or 0,
        "hf_torch": torch.__version__,
        "hf_transformers": transformers.__version__,
    }
