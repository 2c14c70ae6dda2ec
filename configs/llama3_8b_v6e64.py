"""llama3_8b_v6e64: Llama 3.1 8B pretraining on a TPU v6e-64 slice (64 chips, 31.25 GiB HBM each).

The llama3_8b shape and data (configs/llama3_8b.py: 8192-token sequences, 256 per step, scanned
layers with full remat, bf16 compute, fully sharded parameters and optimizer state); each v6e
chip has a third of a v5p chip's HBM, so every step runs as micro-batches of one sequence per
chip (train.grad_accum = 4; the global batch and the results are unchanged).

Check it fits before renting the slice, then run it (see README, "Run on a TPU pod"):
  llm compile --config configs/llama3_8b_v6e64.py --topology v6e-64
  launch/tpu_vm.sh --name my-v6e --zone us-east5-b --type v6e-64 -- llm train \
      --config configs/llama3_8b_v6e64.py --workdir gs://bucket/runs/8b-v6e --config.data.path='gs://bucket/corpus/*.txt'
Mesh: data=1 x fsdp=64 x tensor=1.
llm compile (libtpu 0.0.42.1): per chip 0.47 GiB parameters + 0.94 GiB AdamW state + 19.91 GiB
temporaries = 21.31 GiB of 31.25 -> fits; 1.215e17 model FLOPs per step, 4.13 s per step at
50% MFU on 64 chips.
"""

from pathlib import Path

from llm.config.loading import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("llama3_8b.py"))
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.train.grad_accum = 4
    return c
