"""small_qwen3: `small` (configs/small.py) built like Qwen3: RMSNorm on q and k per head (QK-norm),
no q/k/v biases; every size, the batch and the layout are small's, so the bench shows what the
family switch costs.

Run:
  llm bench --config configs/small_qwen3.py --vs-hf
  llm bench generate --config configs/small_qwen3.py --vs-hf
Expect: the same ratios to Hugging Face transformers (here its Qwen3ForCausalLM, same parameter
count) as `small` has to its Llama. Measured figures: README Performance.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("small.py"))
    c.model.qk_norm = True
    c.model.rope_theta = 1_000_000.0  # Qwen3's base (no effect on speed)
    return c
