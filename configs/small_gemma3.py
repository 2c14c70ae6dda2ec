"""small_gemma3: `small` (configs/small.py) built like Gemma 3: QK-norm, RMSNorm with (1 + weight),
sandwich (pre and post) norms, GeGLU (tanh GELU), embeddings scaled by sqrt(d_model), tied
embeddings, and five sliding-window layers per global one (window 64 = a quarter of the 256-token
sequence) with their own RoPE base (local 10k, global 1M). Every size, the batch and the layout
are small's, so the bench shows what the family switches cost. Soft-capping (Gemma 2) is
measured by configs/small_gemma2.py.

Run:
  llm bench --config configs/small_gemma3.py --vs-hf
  llm bench generate --config configs/small_gemma3.py --vs-hf
Expect: the same ratios to Hugging Face transformers (here its Gemma3ForCausalLM with its default
sliding-window cache, same parameter count) as `small` has to its Llama. Measured figures: README
Performance.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("small.py"))
    m = c.model
    m.qk_norm = True
    m.norm_plus_one = True
    m.post_norms = True
    m.mlp_activation = "gelu_tanh"
    m.embed_scale = True
    m.tie_embeddings = True
    m.norm_eps = 1e-6
    m.sliding_window = c.data.seq_len // 4
    m.layer_types = tuple("sliding" if (i + 1) % 6 else "full" for i in range(m.n_layers))  # 5:1 local:global
    m.rope_theta = 1_000_000.0
    m.rope_local_theta = 10_000.0
    return c
