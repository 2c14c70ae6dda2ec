"""classify_tiny: sequence classification with `tiny`: which standard-library package a
function comes from (the built-in corpus's classification split), a linear head on the last
real token, every parameter fine-tuned (override for LoRA or a frozen backbone).

Run (PRE: a `tiny` workdir, an `llm export` directory or a Hugging Face model directory):
  llm classify --config configs/classify_tiny.py --workdir runs/cls_full --init-from PRE --data runs/corpus/manifest.json
  llm classify --config configs/classify_tiny.py --workdir runs/cls_lora --init-from PRE --data runs/corpus/manifest.json --config.peft.lora_rank=8 --config.optim.lr=2e-3
  llm classify --config configs/classify_tiny.py --workdir runs/cls_frozen --init-from PRE --data runs/corpus/manifest.json --config.peft.freeze=.* --config.optim.lr=2e-3
  llm compare runs/cls_full runs/cls_frozen runs/cls_lora
Expect: accuracy and macro-F1 on the held-out split (whole modules held out) in cost.json and
summary.json, next to the majority-class baseline (the most frequent held-out label).
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("tiny.py"))
    c.unlock()
    c.finetune.task = "classification"
    c.finetune.patience = 3
    c.data.seq_len = 256
    c.data.batch_size = 16
    c.train.steps = 300
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.eval_steps = 1000  # the whole held-out split
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.0
    return c
