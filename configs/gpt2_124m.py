"""gpt2_124m: the GPT-2 small shape (124M parameters, tied embeddings, learned positions).

Run (CPU works for a few steps; a GPU or TPU for a real run):
  llm train --config configs/gpt2_124m.py --workdir runs/gpt2 --config.data.path='corpus/*.txt'
Expect: 124,475,904 parameters (vocab 50257 padded to 50304; counted from the abstract model,
2026-12-04). Throughput on a GPU or TPU has not been measured (no accelerator was available);
CPU step times for this shape are in the README's fine-tuning cost table.
"""

from llm.config.base import base_config


def get_config():
    c = base_config()
    c.model.family = "gpt2"
    c.model.vocab_size = 50257
    c.model.d_model = 768
    c.model.n_layers = 12
    c.model.n_heads = 12
    c.model.n_kv_heads = 12
    c.model.d_ff = 3072
    c.model.max_seq_len = 1024
    c.model.tie_embeddings = True
    c.model.norm_eps = 1e-5
    c.data.seq_len = 1024
    c.data.batch_size = 16
    c.train.steps = 10000
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.optim.lr = 6e-4
    c.optim.warmup_steps = 700
    c.checkpoint.every_steps = 1000
    return c
