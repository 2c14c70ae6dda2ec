"""small: a 35.7M-parameter Llama, the CPU benchmark shape.

Run:
  llm bench --config configs/small.py --vs-hf --json bench.json
  llm train --config configs/small.py --workdir runs/small
Expect: the bench prints tokens/s, MFU and the ratio to Hugging Face transformers (PyTorch f32)
on the same shape. Measured with that command on the 2-core development VM with no other job
running (2026-11-22, README Performance): 3.26 s per step of 8 x 256 tokens, MFU 70.4%.
"""

from llm.config.base import base_config


def get_config():
    c = base_config()
    c.model.family = "llama"
    c.model.vocab_size = 8192
    c.model.d_model = 512
    c.model.n_layers = 8
    c.model.n_heads = 8
    c.model.n_kv_heads = 8
    c.model.d_ff = 1536
    c.model.max_seq_len = 512
    # The CPU-fast layout (same values): causal attention in 64-position query blocks, and the
    # LM head + loss in 128-position chunks. On the 2-core dev VM a step went 3.75 s -> ~3.2 s.
    c.model.attention_impl = "blocked"
    c.model.loss_chunk = 128
    c.data.source = "synthetic"
    c.data.seq_len = 256
    c.data.batch_size = 8
    c.train.steps = 1000
    c.train.log_every = 10
    c.train.eval_every = 200
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    return c
