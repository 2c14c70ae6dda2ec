"""sft_qlora_llama3_8b: QLoRA on Llama 3.1 8B: the frozen base stored in NF4 (blocks of 64,
0.56 bytes per value: ~4.5 GB instead of 32 GB in f32), LoRA adapters (rank 16) in f32.

Run on a pod or a smaller slice (PRE: a Hugging Face Llama 3.1 8B directory, or our workdir / export):
  launch/tpu_vm.sh --name my-v5e --type v5litepod-8 -- llm sft --config configs/sft_qlora_llama3_8b.py \
      --workdir /mnt/runs/sft_qlora_8b --init-from /mnt/models/Llama-3.1-8B --data /mnt/data/chat.jsonl
Expect: the same trainable parameters as sft_lora_llama3_8b with about 1/7 of its frozen bytes
(cost.json's frozen_bytes); merged/ folds the adapters into the original f32 start weights.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("sft_lora_llama3_8b.py"))
    c.unlock()
    c.peft.quantize = "nf4"
    c.peft.quant_block = 64
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
