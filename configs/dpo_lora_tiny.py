"""dpo_lora_tiny: DPO of a `tiny`-shaped model with LoRA (rank 8, every linear layer): the
quickstart's preference stage. The reference policy is the same frozen base with the adapters
switched off (dpo.reference=auto -> adapters_off): no second copy of the weights.

Run (PRE: an SFT workdir, e.g. the quickstart's runs/quickstart/sft_lora):
  llm dpo --config configs/dpo_lora_tiny.py --workdir runs/dpo --init-from PRE --data runs/corpus/manifest.json
  llm dpo --config configs/dpo_lora_tiny.py --config.dpo.loss=simpo ...   # or ipo, robust, hinge, orpo
Expect: held-out rewards/accuracies above 0.5 and a positive held-out rewards/margins; the
workdir gets cost.json, adapter/, merged/ and margins.png.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("dpo_full_tiny.py"))
    c.unlock()
    c.peft.lora_rank = 8
    c.peft.lora_alpha = 16.0
    c.peft.lora_targets = "all_linear"
    c.optim.lr = 5e-4  # adapters start at zero and want a larger step than full fine-tuning
    return c
