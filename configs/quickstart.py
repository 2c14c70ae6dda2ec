"""quickstart: the pretraining stage of `llm quickstart` (README main job): `tiny`'s shape with a
1024-token sentencepiece vocabulary, trained on 4M tokens of the curated built-in corpus.

Run (after `llm data builtin`, `llm data curate` and `llm tokenizer train`, as the quickstart does):
  llm train --config configs/quickstart.py --workdir runs/quickstart/pretrain \
      --config.data.path=runs/quickstart/curated/manifest.json \
      --config.data.tokenizer=runs/quickstart/pretrain/tokenizer/tokenizer.model
Expect: the held-out loss falls from ~6.9 (uniform over 1024 tokens) to about 3 nats per token.
Measured 2026-12-04 (`bash launch/local.sh`, 2-core AMD EPYC VM, no other job): this stage 243 s,
eval loss 3.08 at step 1000; the whole main job 7 min 32 s (the reward-model stage 91 s, LoRA DPO 75 s).
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("tiny.py"))
    c.unlock()
    c.model.vocab_size = 1024
    c.model.max_seq_len = 512  # RoPE: no parameters; the preference stages pack whole pairs into 512-token rows
    c.data.seq_len = 256
    c.data.batch_size = 16
    c.train.steps = 1000
    c.train.log_every = 25
    c.train.eval_every = 250
    c.train.eval_steps = 8
    c.optim.warmup_steps = 50
    return c
