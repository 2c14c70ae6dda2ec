"""llama3_8b: the Llama 3.1 8B shape, FSDP over a TPU pod slice (v5p-64: 32 chips).

Run on a pod (see README, "Run on a TPU pod"):
  launch/tpu_vm.sh --name my-v5p --type v5p-64 -- llm train --config configs/llama3_8b.py \
      --workdir gs://bucket/runs/8b --config.data.path='gs://bucket/corpus/*.txt'
Expect: ~8.03B parameters; mesh fsdp=-1 (all chips), scanned layers with full remat, bf16 compute.
"""

from llm.config.base import base_config


def get_config():
    c = base_config()
    c.model.family = "llama"
    c.model.vocab_size = 128256
    c.model.d_model = 4096
    c.model.n_layers = 32
    c.model.n_heads = 32
    c.model.n_kv_heads = 8
    c.model.d_ff = 14336
    c.model.max_seq_len = 131072
    c.model.rope_theta = 500000.0
    c.model.rope_scaling.type = "llama3"
    c.model.rope_scaling.factor = 8.0
    c.model.rope_scaling.original_max_position = 8192
    c.model.scan_layers = True
    c.model.remat = "full"
    c.data.seq_len = 8192
    c.data.batch_size = 256
    c.train.grad_accum = 4  # 4 micro-batches of 2 sequences per chip: see the docstring
    c.train.steps = 100000
    c.train.log_every = 10
    c.train.eval_every = 1000
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 2000
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.checkpoint.every_steps = 500
    return c
