"""llama3_8b_lora_v5e8: LoRA instruction tuning of Llama 3.1 8B on one TPU v5e-8 host (8 chips, 15.75 GiB HBM each).

The llama3_8b shape with parameters fully sharded over the 8 chips (mesh data=1 x fsdp=8 x
tensor=1), scanned layers with full remat, bf16 compute, 2048-token sequences, 32 per step
(4 per chip); LoRA rank 16 (alpha 32) on every linear layer, the base frozen. Full fine-tuning
cannot fit here: f32 weights plus AdamW moments alone are 8.03B x 12 bytes / 8 chips = 11.2 GiB
per chip before any activation.

Run on the host (PRE: a Hugging Face Llama 3.1 8B directory, or an `llm export` of a run):
  launch/tpu_vm.sh --name my-v5e --zone us-west4-a --type v5e-8 -- llm sft \
      --config configs/llama3_8b_lora_v5e8.py --workdir gs://bucket/runs/8b-lora --init-from PRE --data DATA.jsonl
Check the fit first:
  llm compile --config configs/llama3_8b_lora_v5e8.py --topology v5e-8
llm compile (libtpu 0.0.42.1) measures the plain train step, i.e. full fine-tuning of this shape:
per chip 3.74 GiB parameters + 7.48 GiB AdamW state + 22.32 GiB temporaries = 33.54 GiB of
15.75 -> does not fit, as expected; compiling the LoRA step (frozen base, adapter-only optimizer
state) needs `llm compile` to build the fine-tuning partition, which it does not do yet.
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
    c.train.grad_accum = 1
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
