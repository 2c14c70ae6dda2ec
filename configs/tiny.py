"""tiny: a 2-layer byte-level Llama that trains in seconds per step on a laptop CPU.

Run:
  llm train --config configs/tiny.py --workdir runs/tiny
Expect: the loss falls from ~5.5 (uniform over 256 bytes) to below 2.5 in 200 steps on the
built-in text; about 0.1 s per step on 2 CPU cores.
"""

from llm.config.base import base_config


def get_config():
    c = base_config()
    c.model.family = "llama"
    c.model.vocab_size = 256
    c.model.d_model = 128
    c.model.n_layers = 2
    c.model.n_heads = 4
    c.model.n_kv_heads = 2
    c.model.d_ff = 384
    c.model.max_seq_len = 256
    c.data.seq_len = 128
    c.data.batch_size = 8
    c.train.steps = 200
    c.train.log_every = 10
    c.train.eval_every = 100
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 10
    return c
