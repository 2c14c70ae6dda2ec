"""sft_frozen_llama3_8b: partial fine-tuning of Llama 3.1 8B: the embeddings and the first 16
of 32 layers frozen (no gradient, no optimizer state), the rest trained. Layers are not
scanned here, so a regex can pick single layers.

Run on a pod (PRE: a Hugging Face Llama 3.1 8B directory, or our workdir / export of one):
  launch/tpu_vm.sh --name my-v5p --type v5p-64 -- llm sft --config configs/sft_frozen_llama3_8b.py \
      --workdir /mnt/runs/sft_frozen_8b --init-from /mnt/models/Llama-3.1-8B --data /mnt/data/chat.jsonl
Expect: ~4.0B trainable parameters (the top 16 layers, final norm and LM head); the frozen
half needs no backward pass below layer 16.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("sft_full_llama3_8b.py"))
    c.unlock()
    c.model.scan_layers = False
    c.peft.freeze = ("^embed$", "^blocks/([0-9]|1[0-5])/")
    return c
