"""dpo_lora_llama3_8b: LoRA DPO (sigmoid loss, beta 0.1) of Llama 3.1 8B on a TPU v5p-64 slice
(32 chips), the slice and mesh of sft_lora_llama3_8b (data=1 x fsdp=32 x tensor=1, scanned layers,
full remat, bf16 compute). LoRA rank 16 (alpha 32) on every linear layer; the reference policy is
the same frozen base with the adapters off (dpo.reference=adapters_off): one extra forward pass
per step, no second copy of the 8B weights. Rows of 4096 positions hold up to 4 packed pairs
(both answers of a pair and its prompt twice: 2 x prompt + chosen + rejected - 2 <= 4096);
64 rows per step (2 per chip), so up to 256 pairs per step.

Run on the pod (PRE: the SFT run to align, e.g. sft_lora_llama3_8b's workdir or its merged/
export, or a Hugging Face Llama 3.1 8B Instruct directory; DATA: {"prompt", "chosen", "rejected"}
JSONL, strings or message lists):
  launch/tpu_vm.sh --name my-v5p --type v5p-64 -- llm dpo --config configs/dpo_lora_llama3_8b.py \
      --workdir /mnt/runs/dpo_lora_8b --init-from PRE --data DATA.jsonl
Expect: loss log 2 = 0.693 at step 0 (policy = reference), then falling, with held-out
rewards/accuracies above 0.5 and rewards/margins above 0; the workdir gets adapter/, peft/,
merged/, cost.json and margins.png.
Check the fit first:
  llm compile --config configs/dpo_lora_llama3_8b.py --topology v5p-64
llm compile (libtpu 0.0.42.1, 2026-12-04, on a 2-core AMD EPYC VM without a TPU) compiles the
step `llm dpo` runs: the frozen base as its own argument, AdamW state for the 41.94M adapter
parameters (0.52%) only, the policy's forward and backward plus the reference's forward over the
same base arrays. Per chip: 0.94 GiB frozen params + 0.10 GiB adapters + 0.21 GiB AdamW state +
0.16 MiB batch + 14.14 GiB temporaries = 15.39 GiB of 95.74 -> fits (compiler's peak 12.88 GiB):
the SFT preset's slice holds the extra reference forward with room to spare. Step 1.414e16
model FLOPs (53.96B per token: 36.71B for the policy's forward and input gradients through the
frozen base plus 17.24B for the reference's forward), about 1.9 s per step at 50% MFU.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("sft_lora_llama3_8b.py"))
    c.unlock()
    c.finetune.task = "dpo"
    c.finetune.patience = 0
    c.data.format = "preference"
    c.data.seq_len = 4096
    c.data.batch_size = 64  # rows; up to 4 pairs each
    c.train.grad_accum = 1  # 2 rows per chip in one pass: 15.39 GiB per chip (see above)
    c.train.steps = 1000
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.eval_steps = 10
    c.dpo.loss = "sigmoid"
    c.dpo.beta = 0.1
    c.dpo.reference = "adapters_off"
    c.dpo.max_pairs_per_row = 4
    c.peft.lora_dropout = 0.0  # TRL's DPOTrainer turns dropout off (DPOConfig.disable_dropout=True)
    c.optim.lr = 5e-5
    c.optim.warmup_steps = 50
    return c
