"""grpo_tiny: GRPO of a `tiny`-shaped byte-level model with LoRA (rank 8, every linear layer) on
the built-in addition task: 4 prompts x 8 completions per step, rewards from llm.rl.tasks.addition.

Run (PRE: an SFT warm start on the task's records, as the README's "RL" section does):
  llm data rl-task --config configs/grpo_tiny.py --out runs/addition
  llm sft  --config configs/sft_lora_tiny.py --workdir runs/addition_sft --init-from runs/tiny --data runs/addition/sft.jsonl
  llm grpo --config configs/grpo_tiny.py --workdir runs/grpo --init-from runs/addition_sft
Expect: the held-out reward and success rate (greedy, 64 held-out problems) rise from the SFT
start; the workdir gets metrics.jsonl, reward.png, samples.jsonl, cost.json, adapter/, merged/.
"""

from llm.config.base import base_config


def get_config():
    c = base_config()
    c.finetune.task = "grpo"
    c.model.max_seq_len = 256
    c.peft.lora_rank = 8
    c.peft.lora_alpha = 16.0
    c.peft.lora_targets = "all_linear"
    c.rl.task = "addition"
    c.rl.digits = 2
    c.rl.prompts_per_step = 4
    c.rl.num_generations = 8
    c.rl.max_prompt_tokens = 48
    c.rl.max_new_tokens = 16
    c.rl.temperature = 1.0
    c.rl.eval_prompts = 64
    c.rl.sample_every = 10
    c.train.steps = 60
    c.train.log_every = 5
    c.train.eval_every = 20
    c.optim.lr = 2e-3  # adapters start at zero and want a larger step than full fine-tuning
    c.optim.warmup_steps = 0
    c.optim.decay = "constant"
    c.optim.weight_decay = 0.0
    c.checkpoint.every_steps = 20
    return c
