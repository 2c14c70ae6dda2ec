"""The peer we compare training speed against: Hugging Face transformers on PyTorch, same
model shape, batch and optimizer (f32 on CPU, its fastest CPU mode; bf16 autocast on a GPU)."""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections

from llm.errors import UserError
from llm.model.spec import ModelSpec


def params_as_hf_counts(spec: ModelSpec, params: Any) -> int:
    """Our parameter count without the vocabulary padding (rows the tokenizer never uses), which
    the transformers model does not have: equal to its count when both are the same model."""
    total = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
    return total - (spec.padded_vocab - spec.vocab_size) * spec.d_model * (1 if spec.tie_embeddings else 2)


def hf_config(config: ml_collections.ConfigDict):
    """The transformers config of the same model as `config`'s, of the family that expresses it
    exactly (Llama, Mistral, Qwen2/3, Gemma 2/3, GPT-2): the config.json our exporter writes
    (llm.interop.hf_config.config_to_hf, the one home of the field mapping), loaded by transformers."""
    import transformers

    from llm.interop.hf_config import config_to_hf

    fields = config_to_hf(config)
    return transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)


def hf_model(config: ml_collections.ConfigDict, **kwargs):
    """The transformers model for `config` (its own random init), with the attention
    implementation transformers picks by default: what a user gets (sdpa, or eager for Gemma 2,
    whose sdpa path has no soft-capping)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_config(hf_config(config), **kwargs)


def check_same_model(ours: int, theirs: int, what: str) -> None:
    """Stop when the peer is not the same model (its parameter count differs from ours)."""
    if ours != theirs:
        raise UserError(f"the Hugging Face peer of {what} has {theirs:,} parameters, ours {ours:,}: it is not the same "
                        "model; fix llm.interop.hf_config.config_to_hf for this family")


def bench_hf_train(config: ml_collections.ConfigDict, batch_size: int, seq_len: int, steps: int, warmup: int = 2, seed: int = 0) -> dict:
    """The peer at its best: on CPU, time it with 1 thread and with all cores and keep the faster
    (on a loaded machine PyTorch with fewer threads can be several times faster)."""
    import torch

    if torch.cuda.is_available():
        return _bench_hf_train(config, batch_size, seq_len, steps, warmup, seed, threads=None)
    runs = [_bench_hf_train(config, batch_size, seq_len, steps, warmup, seed, threads=t)
            for t in sorted({1, os.cpu_count() or 1})]
    return max(runs, key=lambda r: r["hf_tokens_per_s"])


def _bench_hf_train(config: ml_collections.ConfigDict, batch_size: int, seq_len: int, steps: int, warmup: int, seed: int, threads: int | None) -> dict:
    """Time `steps` AdamW steps of the transformers model: tokens/s, step time, and the batch
    shape, parameter count and tokens it really ran."""
    import torch
    import transformers

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = hf_model(config).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=cuda)
    tokens = torch.randint(0, config.model.vocab_size, (batch_size, seq_len + 1), device=device)
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
        "hf_model": type(model).__name__,
        "hf_attention": model.config._attn_implementation,
        "hf_threads": threads or 0,
        "hf_torch": torch.__version__,
        "hf_transformers": transformers.__version__,
    }
