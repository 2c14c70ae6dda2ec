"""sft_lora_tiny: instruction tuning of `tiny` with LoRA (rank 8, alpha 16, every linear layer):
the quickstart's fine-tuning stage.

Run (PRE: a `tiny` workdir, an `llm export` directory or a Hugging Face model directory):
  llm sft --config configs/sft_lora_tiny.py --workdir runs/sft_lora --init-from PRE --data runs/corpus/manifest.json
Expect: a few % of the parameters trained; the held-out assistant-token loss falls below the
start checkpoint's; the workdir gets cost.json, merged/ (generate with
`llm generate --checkpoint runs/sft_lora/merged`), adapter/ and peft/ (Hugging Face PEFT format).
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("sft_full_tiny.py"))
    c.unlock()
    c.peft.lora_rank = 8
    c.peft.lora_alpha = 16.0
    c.peft.lora_targets = "all_linear"
    c.optim.lr = 2e-3  # adapters start at zero and want a larger step than full fine-tuning
    return c
