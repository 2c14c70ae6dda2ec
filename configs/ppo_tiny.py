"""ppo_tiny: PPO (TRL 0.x PPOTrainer's algorithm) of a `tiny`-shaped model with LoRA (rank 8, every
linear layer) against a reward model from `llm rm`, on the built-in docstring prompts (a stdlib
function's signature + docstring; the reward is the reward model's score only, not the task's
doctests). A value head on the policy trunk is the critic (rl.value_model="head"); with
--config.rl.value_model=separate the critic has its own weights instead (TRL PPO's default): a second
set of LoRA adapters over the same frozen base plus a value head, written to merged/critic.safetensors.
The reference is the base with the adapters off. 8 prompts x 2 completions per rollout, 4 PPO
epochs of 2 minibatches.

Run (SFT: an `llm sft` workdir; RM: an `llm rm` workdir trained from the same tokenizer):
  llm ppo --config configs/ppo_tiny.py --workdir runs/ppo --init-from runs/sft --reward-model runs/rm
Expect: the held-out reward (the reward model's mean score of greedy completions of 32 held-out
prompts) rises from its start value. Measured 2026-12-04 from the quickstart's sft_lora and rm
(2-core AMD EPYC VM, no other job): 60 s; held-out reward 0.184 -> 0.328 -> 0.492 -> 0.611 -> 0.582
at steps 0 / 40 / 80 / 120 / 160, while the greedy completions got shorter (38 -> 12 tokens: the
reward model and the missing-EOS penalty both favour stopping); metrics.jsonl logs objective/scores, objective/kl,
loss/policy_avg, loss/value_avg, policy/clipfrac_avg; the workdir gets samples.jsonl, cost.json,
adapter/, peft/ (the policy's adapters) and merged/ (the policy, with value_head.safetensors or
critic.safetensors beside it).
"""

from llm.config.base import base_config


def get_config():
    c = base_config()
    c.finetune.task = "ppo"
    c.model.max_seq_len = 256  # --init-from replaces it with the start model's
    c.peft.lora_rank = 8
    c.peft.lora_alpha = 16.0
    c.peft.lora_targets = "all_linear"
    c.rl.task = "docstring"  # prompts only: the reward is rl.reward_model (--reward-model)
    c.rl.prompts_per_step = 8
    c.rl.num_generations = 2  # PPO needs no group: 1 works too
    c.rl.steps_per_generation = 2  # minibatches per PPO epoch
    c.rl.num_ppo_epochs = 4  # TRL PPO 4
    c.rl.max_prompt_tokens = 160
    c.rl.max_new_tokens = 48
    c.rl.kl_coef = 0.05  # TRL PPO 0.05
    c.rl.kl_estimator = "k1"  # TRL PPO's default (the base config's k3 is TRL GRPO's)
    c.rl.missing_eos_penalty = 1.0  # a completion that never stops scores 1 less
    c.rl.value_model = "head"  # separate: the critic's own adapters + head over the shared base
    c.rl.eval_prompts = 32
    c.rl.sample_every = 10
    c.train.steps = 160  # optimizer steps: 20 rollouts x 4 epochs x 2 minibatches
    c.train.log_every = 8
    c.train.eval_every = 40
    c.optim.lr = 1e-3  # adapters start at zero and want a larger step than full fine-tuning
    c.optim.warmup_steps = 0
    c.optim.decay = "constant"
    c.optim.weight_decay = 0.0
    c.checkpoint.every_steps = 40
    return c
