"""grpo_lora_llama3_8b: LoRA GRPO (DAPO's clip-higher, token-level loss) of Llama 3.1 8B on a TPU
v5p-64 slice (32 chips), the slice and mesh of sft_lora_llama3_8b (data=1 x fsdp=32 x tensor=1,
scanned layers, full remat, bf16 compute). LoRA rank 16 (alpha 32) on every linear layer; the
sampler decodes the adapted model unmerged from the very arrays the train step holds, and
beta = 0 (TRL's default) needs no reference at all. Each rollout: 64 prompts x 8 completions of
up to 1024 new tokens after prompts of up to 512, trained as 4 optimizer steps of 128 rows (4
per chip); the built-in docstring -> body task, rewarded by running its doctests in the sandbox.

Run on the pod (PRE: an SFT run, e.g. sft_lora_llama3_8b's merged/ export, or a Hugging Face
Llama 3.1 8B Instruct directory; other prompts: rl.task=jsonl with --data and rl.rewards):
  launch/tpu_vm.sh --name my-v5p --type v5p-64 -- llm grpo --config configs/grpo_lora_llama3_8b.py \
      --workdir /mnt/runs/grpo_lora_8b --init-from PRE
Check the fit first:
  llm compile --config configs/grpo_lora_llama3_8b.py --topology v5p-64
(the compiled figures are in the README's Performance table). Rollouts run on one host
(`llm grpo` refuses a multi-process job); this preset is the step's shape for `llm compile`
and a single-host slice.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("sft_lora_llama3_8b.py"))
    c.unlock()
    c.finetune.task = "grpo"
    c.finetune.patience = 0
    c.data.seq_len = 128  # derived from rl.max_prompt_tokens + rl.max_new_tokens by `llm grpo` (base default here)
    c.data.batch_size = 8  # derived: prompts_per_step * num_generations / steps_per_generation
    c.train.grad_accum = 1
    c.train.steps = 400
    c.train.log_every = 4
    c.train.eval_every = 40
    c.peft.lora_dropout = 0.0  # TRL's GRPOTrainer turns dropout off
    c.rl.task = "docstring"
    c.rl.task_size = 1532
    c.rl.held_out = 64
    c.rl.prompts_per_step = 64
    c.rl.num_generations = 8
    c.rl.steps_per_generation = 4
    c.rl.max_prompt_tokens = 512
    c.rl.max_new_tokens = 1024
    c.rl.temperature = 1.0
    c.rl.epsilon_high = 0.28  # DAPO
    c.rl.loss_agg = "dapo"
    c.rl.beta = 0.0
    c.rl.eval_prompts = 64
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 10
    c.optim.decay = "constant"
    c.optim.weight_decay = 0.0
    return c
