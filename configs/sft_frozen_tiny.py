"""sft_frozen_tiny: partial fine-tuning of `tiny`: the embeddings and the first block are frozen
(no gradient, no optimizer state), the last block, final norm and LM head train.

Run (PRE: a `tiny` workdir, an `llm export` directory or a Hugging Face model directory):
  llm sft --config configs/sft_frozen_tiny.py --workdir runs/sft_frozen --init-from PRE --data runs/corpus/manifest.json
Expect: about half of the parameters trained; the eval loss falls below the start checkpoint's.
Other splits are a regex away, e.g. --config.peft.freeze='^embed$,^blocks/'.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("sft_full_tiny.py"))
    c.unlock()
    c.peft.freeze = ("^embed$", "^blocks/0/")
    c.optim.lr = 3e-4
    return c
