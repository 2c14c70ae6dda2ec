"""sft_lora_gemma3_1b: LoRA instruction tuning of Gemma-3-1B-it on one TPU v5e-8 host (8 chips, 15.75 GiB HBM each).

The Gemma 3 1B text shape (26 layers, d_model 1152, 4 query heads / 1 KV head of 256, GeGLU
6912, QK-norm, (1 + w) RMSNorms before and after attention and MLP, embeddings scaled by
sqrt(1152), tied 262,144-token embedding; five 512-token sliding-window layers per global one,
RoPE base 10k on the windowed layers and 1M on the global ones, queries scaled by 256^-0.5),
parameters fully sharded over the 8 chips (mesh data=1 x fsdp=8 x tensor=1), scanned layers with
full remat, bf16 compute, 4096-token packed chat sequences in Gemma's turn format, 32 per step (4 per chip) in 2
micro-batches of 16; LoRA rank 16 (alpha 32) on every linear layer (q/k/v/o_proj,
gate/up/down_proj; the norms stay frozen), the base frozen.
The LM head runs in 256-position chunks (model.loss_chunk): a whole sequence's 262k-wide f32
logits would be 4 GiB per sequence.

Run on the host (PRE: a Hugging Face gemma-3-1b-it directory, e.g. `huggingface-cli download google/gemma-3-1b-it`):
  launch/tpu_vm.sh --name my-v5e --zone us-west4-a --type v5e-8 -- llm sft \
      --config configs/sft_lora_gemma3_1b.py --workdir gs://bucket/runs/gemma3-lora --init-from PRE --data DATA.jsonl
The model section below is what `--init-from PRE` imports (tests/test_configs_families.py checks
it against gemma-3-1b-it's config.json), so the fit can be checked before any download:
  llm compile --config configs/sft_lora_gemma3_1b.py --topology v5e-8
llm compile (libtpu 0.0.42.1) compiles the LoRA step `llm sft` runs (the 5:1 windowed / global
layers in one layer scan): 999.89M parameters frozen, 13.05M adapter parameters (1.29%) trained.
Per chip: 0.47 GiB frozen params + 38.57 MiB adapters + 77.14 MiB AdamW state + 12.77 GiB
temporaries = 13.35 GiB of 15.75 -> fits (compiler's peak 11.05 GiB); step 7.275e14 model FLOPs
(5.55B per token: forward and input gradients through the frozen base, no weight gradients for
it), about 0.92 s per step at 50% MFU. In one pass (train.grad_accum=1, 4 sequences per chip)
the temporaries are 17.34 GiB and the total 17.92 GiB: does not fit, and `llm compile` suggests
grad_accum=2 (13.35 GiB) or 4 (7.80 GiB), hence grad_accum=2 here.
Expect: the workdir gets adapter/ (MBs), peft/ (loads with `peft` onto transformers'
Gemma3ForCausalLM) and merged/ (`llm export` writes a gemma3_text checkpoint).
"""

from llm.config.base import base_config


def get_config():
    c = base_config()
    m = c.model
    m.family = "llama"
    m.vocab_size = 262144
    m.d_model = 1152
    m.n_layers = 26
    m.n_heads = 4
    m.n_kv_heads = 1
    m.head_dim = 256
    m.d_ff = 6912
    m.max_seq_len = 32768
    m.norm_eps = 1e-6
    m.rope_theta = 1_000_000.0
    m.rope_local_theta = 10_000.0
    m.tie_embeddings = True
    m.sliding_window = 512
    m.layer_types = tuple("sliding" if (i + 1) % 6 else "full" for i in range(m.n_layers))  # 5 local : 1 global
    m.qk_norm = True
    m.norm_plus_one = True
    m.post_norms = True
    m.mlp_activation = "gelu_tanh"
    m.embed_scale = True
    m.query_pre_attn_scalar = 256.0
    m.scan_layers = True
    m.remat = "full"
    m.loss_chunk = 256
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.data.format = "sft"
    c.data.chat_template = "gemma"  # Gemma's <start_of_turn>user / model turns
    c.data.seq_len = 4096
    c.data.batch_size = 32
    c.data.long_documents = "truncate"
    c.train.grad_accum = 2  # 16-sequence micro-batches: 4 per chip in one pass needs 17.92 GiB (see above)
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
