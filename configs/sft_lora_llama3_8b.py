"""sft_lora_llama3_8b: LoRA (rank 16, alpha 32, every linear layer of all 32 layers) on Llama
3.1 8B; the frozen base stays in precision.params, FSDP-sharded like the full run.

Run on a pod (PRE: a Hugging Face Llama 3.1 8B directory, or our workdir / export of one):
  launch/tpu_vm.sh --name my-v5p --type v5p-64 -- llm sft --config configs/sft_lora_llama3_8b.py \
      --workdir /mnt/runs/sft_lora_8b --init-from /mnt/models/Llama-3.1-8B --data /mnt/data/chat.jsonl
Expect: ~42M trainable parameters (0.5%); no optimizer state or weight gradients for the base;
the workdir gets adapter/ (MBs), peft/ (loads with `peft` onto the transformers model) and merged/.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("sft_full_llama3_8b.py"))
    c.unlock()
    c.peft.lora_rank = 16
    c.peft.lora_alpha = 32.0
    c.peft.lora_dropout = 0.05
    c.peft.lora_targets = "all_linear"
    c.optim.lr = 2e-4
    return c
