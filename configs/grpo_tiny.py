"""grpo_tiny: GRPO of a `tiny`-shaped byte-level model with LoRA (rank 8, every linear layer) on
the built-in addition task: 4 prompts x 8 completions per step, rewards from llm.rl.tasks.addition.

Run (PRE: an SFT warm start on the task's records, as the README's "RL" section does):
  llm data rl-task --config configs/grpo_tiny.py --out runs/addition
  llm sft  --config configs/sft_lora_tiny.py --workdir runs/addition_sft --init-from runs/tiny --data runs/addition/sft.jsonl
  llm grpo --config configs/grpo_tiny.py --workdir runs/grpo --init-from runs/addition_sft
Expect: the held-out reward and success rate (greedy, the 30 held-out problems) rise from the
SFT start; the workdir gets metrics.jsonl, reward.png, samples.jsonl, cost.json, adapter/, merged/.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("tiny.py"))  # the shape; --init-from replaces it with the start's
    c.unlock()
    c.finetune.task = "grpo"
    c.peft.lora_rank = 8
    c.peft.lora_alpha = 16.0
    c.peft.lora_targets = "all_linear"
    c.rl.task = "addition"
    c.rl.digits = 1  # 100 problems: a 2-layer byte model does not learn 2-digit sums on a CPU in minutes
    c.rl.task_size = 100
    c.rl.held_out = 30
    c.rl.prompts_per_step = 4
    c.rl.num_generations = 8
    c.rl.max_prompt_tokens = 48
    c.rl.max_new_tokens = 16
    c.rl.temperature = 1.0
    c.rl.eval_prompts = 30
    c.rl.sample_every = 10
    c.train.steps = 150
    c.train.log_every = 5
    c.train.eval_every = 50
    c.optim.lr = 2e-3  # adapters start at zero and want a larger step than full fine-tuning
    c.optim.warmup_steps = 0
    c.optim.decay = "constant"
    c.optim.weight_decay = 0.0
    c.checkpoint.every_steps = 50
    return c
