"""llama3_8b_lora_v5e8: LoRA instruction tuning of Llama 3.1 8B on one TPU v5e-8 host (8 chips, 15.75 GiB HBM each).

The llama3_8b shape with parameters fully sharded over the 8 chips (mesh data=1 x fsdp=8 x
tensor=1), scanned layers with full remat, bf16 compute, 2048-token sequences, 32 per step
(4 per chip) in 2 micro-batches of 16; LoRA rank 16 (alpha 32) on every linear layer, the base
frozen. Full fine-tuning cannot fit here: f32 weights plus AdamW moments alone are
8.03B x 12 bytes / 8 chips = 11.2 GiB per chip before any activation.

Run on the host (PRE: a Hugging Face Llama 3.1 8B directory, or an `llm export` of a run):
  launch/tpu_vm.sh --name my-v5e --zone us-west4-a --type v5e-8 -- llm sft \
      --config configs/llama3_8b_lora_v5e8.py --workdir gs://bucket/runs/8b-lora --init-from PRE --data DATA.jsonl
Check the fit first:
  llm compile --config configs/llama3_8b_lora_v5e8.py --topology v5e-8
llm compile (libtpu 0.0.42.1) compiles the LoRA step `llm sft` runs: the frozen base as a
separate argument, optimizer state for the 41.94M adapter parameters (0.52%) only. Per chip:
3.74 GiB frozen params + 0.11 GiB adapters + 0.22 GiB AdamW state + 8.44 GiB temporaries =
12.50 GiB of 15.75 -> fits (compiler's peak 10.19 GiB); step 2.195e15 model FLOPs (33.49B per
token: forward and input gradients through the frozen base, no weight gradients for it, against
57.91B for full training), about 2.8 s per step at 50% MFU. In one pass (train.grad_accum=1,
4 sequences per chip) the temporaries are 12.25 GiB and the total 16.32 GiB: does not fit, and
`llm compile` suggests grad_accum=2 (12.50 GiB) or 4 (9.69 GiB), hence grad_accum=2 here.
For comparison, the plain step (full fine-tuning of this shape, grad_accum=1) measured
3.74 GiB parameters + 7.48 GiB AdamW state + 22.32 GiB temporaries = 33.54 GiB per chip.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("llama3_8b.py"))
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.model.scan_layers = True
    c.model.remat = "full"
    c.data.format = "sft"
    c.data.seq_len = 2048
    c.data.batch_size = 32
    c.data.long_documents = "truncate"
    c.train.grad_accum = 2  # 16-sequence micro-batches: 4 per chip in one pass needs 16.32 GiB (see above)
    c.train.steps = 2000
    c.train.eval_every = 200
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.0
    c.peft.lora_rank = 16
    c.peft.lora_alpha = 32.0
    c.peft.lora_targets = "all_linear"
    c.finetune.task = "sft"
    c.checkpoint.every_steps = 200
    return c
