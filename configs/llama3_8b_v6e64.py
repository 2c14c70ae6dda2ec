"""llama3_8b_v6e64: Llama 3.1 8B pretraining on a TPU v6e-64 slice (64 chips, 31.25 GiB HBM and
918 TFLOP/s bf16 each).

The llama3_8b shape and data (configs/llama3_8b.py: 8192-token sequences, 256 per step, scanned
layers with full remat, bf16 compute), laid out for v6e: mesh data=1 x fsdp=64 x tensor=1 (every
chip holds 1/64 of the parameters and AdamW state), 4 sequences per chip per step run as 2
micro-batches of 2 (train.grad_accum=2; the global batch and the results are unchanged). Fewer
micro-batches mean fewer all-gathers of the sharded weights per step (FSDP gathers each layer
once per micro-batch); what makes 2 sequences per chip fit in a v6e chip's HBM is blocked causal
attention (query blocks of 512 positions, never the 8192 x 8192 score matrix) and the LM head +
loss in chunks of 2048 positions.

Check it fits before renting the slice, then run it (see README, "Run on a TPU pod"):
  JAX_PLATFORMS=cpu llm compile --config configs/llama3_8b_v6e64.py --topology v6e-64
  launch/tpu_vm.sh --name my-v6e --zone us-east5-b --type v6e-64 -- llm train \
      --config configs/llama3_8b_v6e64.py --workdir gs://bucket/runs/8b-v6e --config.data.path='gs://bucket/corpus/*.txt'
llm compile (libtpu 0.0.42.1, on the 2-core CPU development VM, 2026-12-04): per chip 0.47 GiB
parameters + 0.94 GiB AdamW state + 23.69 GiB temporaries = 25.10 GiB of 31.25 -> fits
(compiler's peak 18.46 GiB); 1.215e17 model FLOPs per step. The same day, same tool: with XLA's
full-square attention, grad_accum=2 needs 43.90 GiB per chip (does not fit, even with the
chunked loss); grad_accum=4 (1 sequence per chip per micro-batch, chunked loss) fits at 21.31
GiB; save_matmul remat at grad_accum=4 needs 42.12 GiB. Step time on a v6e slice has not been
measured (no TPU was available).
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("llama3_8b.py"))
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.train.grad_accum = 2  # 2 micro-batches of 2 sequences per chip: see the docstring
    c.model.attention_impl = "blocked"
    c.model.attention_block = 512
    c.model.loss_chunk = 2048
    return c
