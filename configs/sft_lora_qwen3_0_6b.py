"""sft_lora_qwen3_0_6b: LoRA instruction tuning of Qwen3-0.6B on one TPU v5e-8 host (8 chips, 15.75 GiB HBM each).

The Qwen3-0.6B shape (28 layers, d_model 1024, 16 query / 8 KV heads of 128, QK-norm, tied
151,936-token embedding, RoPE base 1M), parameters fully sharded over the 8 chips (mesh data=1 x
fsdp=8 x tensor=1), scanned layers with full remat, bf16 compute, 4096-token packed chat sequences
(ChatML, Qwen's own turn format), 32 per step; LoRA rank 16 (alpha 32) on every linear layer
(q/k/v/o_proj, gate/up/down_proj; the QK-norms stay frozen), the base frozen. The LM head runs in
512-position chunks (model.loss_chunk) so the 152k-wide logits never exist for a whole sequence.

Run on the host (PRE: a Hugging Face Qwen3-0.6B directory, e.g. `huggingface-cli download Qwen/Qwen3-0.6B`):
  launch/tpu_vm.sh --name my-v5e --zone us-west4-a --type v5e-8 -- llm sft \
      --config configs/sft_lora_qwen3_0_6b.py --workdir gs://bucket/runs/qwen3-lora --init-from PRE --data DATA.jsonl
The model section below is what `--init-from PRE` imports (tests/test_configs_families.py checks
it against Qwen3-0.6B's config.json), so the fit can be checked before any download:
  llm compile --config configs/sft_lora_qwen3_0_6b.py --topology v5e-8
llm compile (libtpu 0.0.42.1) compiles the LoRA step `llm sft` runs: 596.05M parameters frozen,
10.09M adapter parameters (1.67%) trained. Per chip: 0.28 GiB frozen params + 27.78 MiB adapters +
55.56 MiB AdamW state + 12.00 GiB temporaries = 12.36 GiB of 15.75 -> fits in one pass
(train.grad_accum=1; compiler's peak 10.96 GiB); step 5.052e14 model FLOPs (3.85B per token:
forward and input gradients through the frozen base, no weight gradients for it), about 0.64 s
per step at 50% MFU.
Expect: the workdir gets adapter/ (MBs), peft/ (loads with `peft` onto transformers'
Qwen3ForCausalLM) and merged/ (`llm export` writes a Qwen3 checkpoint).
"""

from llm.config.base import base_config


def get_config():
    c = base_config()
    m = c.model
    m.family = "llama"
    m.vocab_size = 151936
    m.d_model = 1024
    m.n_layers = 28
    m.n_heads = 16
    m.n_kv_heads = 8
    m.head_dim = 128
    m.d_ff = 3072
    m.max_seq_len = 40960
    m.norm_eps = 1e-6
    m.rope_theta = 1_000_000.0
    m.tie_embeddings = True
    m.qk_norm = True
    m.scan_layers = True
    m.remat = "full"
    m.loss_chunk = 512
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.data.format = "sft"
    c.data.chat_template = "chatml"
    c.data.seq_len = 4096
    c.data.batch_size = 32
    c.data.long_documents = "truncate"
    c.train.steps = 2000
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.eval_steps = 20
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.0
    c.peft.lora_rank = 16
    c.peft.lora_alpha = 32.0
    c.peft.lora_dropout = 0.05
    c.peft.lora_targets = "all_linear"
    c.finetune.task = "sft"
    c.checkpoint.every_steps = 200
    return c
