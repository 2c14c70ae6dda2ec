"""sft_full_tiny: instruction tuning of `tiny`, every parameter trained (the baseline the LoRA,
QLoRA and frozen presets are measured against).

Run (PRE: a `tiny` workdir, an `llm export` directory or a Hugging Face model directory):
  llm data builtin --out runs/corpus
  llm sft --config configs/sft_full_tiny.py --workdir runs/sft_full --init-from PRE --data runs/corpus/manifest.json
  llm compare runs/sft_full runs/sft_lora runs/sft_qlora runs/sft_frozen
Expect: the held-out assistant-token loss (eval loss) falls below the start checkpoint's within
the first eval; cost.json reports 100% of the parameters trained. The model and tokenizer come
from PRE; the loss is on the assistant's tokens only (the function bodies).
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("tiny.py"))
    c.unlock()
    c.data.format = "sft"
    c.data.seq_len = 256
    c.data.batch_size = 8
    c.data.long_documents = "truncate"  # keep the start of long examples (as TRL's max_length does)
    c.train.steps = 200
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.eval_steps = 8
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 10
    c.optim.weight_decay = 0.0
    c.finetune.task = "sft"
    c.finetune.patience = 2
    return c
