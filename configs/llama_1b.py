"""llama_1b: the Llama 3.2 1B shape (tied embeddings, GQA 32/8, RoPE theta 5e5 with Llama-3 scaling).

Run on one GPU:
  llm train --config configs/llama_1b.py --workdir runs/llama1b --config.data.path='corpus/*.txt'
Expect: 1.24B parameters; sequence 2048 in bf16 with save_matmul remat over scanned layers.
Mesh: one device (data=-1 = all devices; on a multi-GPU node it becomes data parallel).
Memory, by count (1,235,814,400 parameters from the abstract model, 2026-12-04): 4.60 GiB of
f32 parameters + 9.21 GiB of AdamW moments, before activations. The whole step per GPU, from the
analytic model (`llm compile --config configs/llama_1b.py --topology h100x1 --levers`,
2026-12-05; no GPU compiler on the CPU machine): 55.21 GiB as given, 42.71 with model.remat=full,
46.00 with optim.offload_state=true, of an H100's ~78 usable. Not yet measured on a GPU
(benchmarks/gpu.sh does): if it runs out of memory, lower the micro-batch with train.grad_accum.
"""

from llm.config.base import base_config


def get_config():
    c = base_config()
    c.model.family = "llama"
    c.model.vocab_size = 128256
    c.model.d_model = 2048
    c.model.n_layers = 16
    c.model.n_heads = 32
    c.model.n_kv_heads = 8
    c.model.head_dim = 64
    c.model.d_ff = 8192
    c.model.max_seq_len = 131072
    c.model.rope_theta = 500000.0
    c.model.rope_scaling.type = "llama3"
    c.model.rope_scaling.factor = 32.0
    c.model.rope_scaling.low_freq_factor = 1.0
    c.model.rope_scaling.high_freq_factor = 4.0
    c.model.rope_scaling.original_max_position = 8192
    c.model.tie_embeddings = True
    c.model.scan_layers = True
    c.model.remat = "save_matmul"
    c.data.seq_len = 2048
    c.data.batch_size = 8
    c.train.steps = 20000
    c.train.log_every = 20
    c.train.eval_every = 1000
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 1000
    c.checkpoint.every_steps = 1000
    return c
