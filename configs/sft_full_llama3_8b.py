"""sft_full_llama3_8b: instruction tuning of Llama 3.1 8B, every parameter trained, FSDP over a
TPU pod slice (v5p-64: 32 chips), 4096-token packed chat sequences.

Run on a pod (PRE: a Hugging Face Llama 3.1 8B directory, or our workdir / export of one):
  launch/tpu_vm.sh --name my-v5p --type v5p-64 -- llm sft --config configs/sft_full_llama3_8b.py \
      --workdir /mnt/runs/sft_full_8b --init-from /mnt/models/Llama-3.1-8B --data /mnt/data/chat.jsonl
Expect: ~8.03B trainable parameters (Adam state ~64 GB, sharded); compare with the LoRA, QLoRA
and frozen presets through `llm compare` on their workdirs.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("llama3_8b.py"))
    c.unlock()
    c.data.format = "sft"
    c.data.chat_template = "default"
    c.data.seq_len = 4096
    c.data.batch_size = 64
    c.data.long_documents = "truncate"
    c.train.steps = 2000
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.eval_steps = 20
    c.optim.lr = 2e-5
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.0
    c.checkpoint.every_steps = 200
    c.finetune.task = "sft"
    c.finetune.patience = 3
    return c
