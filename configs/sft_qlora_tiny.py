"""sft_qlora_tiny: QLoRA on `tiny`: the frozen base stored in NF4 (blocks of 64, f32 scales,
0.56 bytes per value), LoRA adapters (rank 8, every linear layer) trained in f32.

Run (PRE: a `tiny` workdir, an `llm export` directory or a Hugging Face model directory):
  llm sft --config configs/sft_qlora_tiny.py --workdir runs/sft_qlora --init-from PRE --data runs/corpus/manifest.json
Expect: the eval loss follows sft_lora_tiny's closely; cost.json's frozen_bytes is about 1/7 of
the f32 base; merged/ folds the adapters into the original f32 start weights.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("sft_lora_tiny.py"))
    c.unlock()
    c.peft.quantize = "nf4"
    c.peft.quant_block = 64
    return c
