"""llama3_8b: Llama 3.1 8B pretraining on a TPU v5p-64 slice (32 chips, 95.74 GiB HBM each).

Mesh data=1 x fsdp=32 x tensor=1 (fsdp=-1: parameters and optimizer state sharded over every
chip), scanned layers with full remat, bf16 compute, 256 sequences of 8192 tokens per step run as
4 micro-batches (train.grad_accum=4; the global batch and the results are unchanged).

Check the fit first (no TPU needed, see README "Run on a TPU pod"), then run on the pod:
  llm compile --config configs/llama3_8b.py --topology v5p-64
  launch/tpu_vm.sh --name my-v5p --zone us-east5-a --type v5p-64 -- llm train --config configs/llama3_8b.py \
      --workdir gs://bucket/runs/8b --config.data.path='gs://bucket/corpus/*.txt'
llm compile (libtpu 0.0.42.1, 2026-12-05): 8.03B parameters; per chip 0.94 GiB parameters + 1.87 GiB
AdamW state + 49.66 GiB temporaries = 52.47 GiB of 95.74 -> fits (26.27 GiB with
model.attention_impl=splash); 1.215e17 model FLOPs per step
(57.9 GFLOP/token), 16.5 s per step at 50% MFU. Without accumulation (train.grad_accum=1) the
step needs 151.6 GiB per chip and does not fit; with 2 micro-batches the compiler runs out of
on-chip VMEM on the 8192 x 8192 attention scores; 4 and 8 (25.2 GiB) fit.
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
