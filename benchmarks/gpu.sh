#!/usr/bin/env bash
# Everything the "accelerator performance" issue asks of one NVIDIA GPU, in about 8 minutes of an
# H100, as one script (GPU time is lent in short slots):
#   machine    nvidia-smi, jax.devices(), the Python packages, and that `llm` imports
#   attention  llm bench attention --impl cudnn --vs xla, packed documents at seq 2048 in bf16
#              (outputs and q/k/v gradients vs an f32 reference, no attention across documents)
#   train__C__off / train__C__maxtext
#              llm bench train for C in small, gpt2_124m, llama_1b at seq 2048, bf16, attention
#              `auto` (cuDNN on a GPU), with XLA_FLAGS empty and with MaxText's GPU flags (those
#              this jax parses: an unknown XLA flag aborts the process, so they are checked first)
#   generate__llama_1b
#              decode tokens/s at batch 1 (with the HBM roofline) and batch 64
# and then the markdown tables (python -m llm.bench.gpu_table DIR, also DIR/summary.md).
#
# Usage, from anywhere, on a machine with jax[cuda], flax, optax, ml_collections installed (the
# repository itself needs no install: PYTHONPATH is set to it; grain, clu and TensorFlow are not
# needed: the smoke run passes in a venv of jax 0.11.2, flax, optax, orbax-checkpoint,
# ml-collections, sentencepiece, psutil and tqdm alone):
#   benchmarks/gpu.sh [DIR]     DIR default: $OUT, else runs/gpu_bench
# DIR/summary.md holds the tables and DIR/all.tar.gz everything. On this project's lent device
# (jax 0.11.2 and flax there, ml-collections not), with the wheel downloaded here first:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml-collections==1.1.0
# and `.whl` carried (and ignored by git), the command is:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site \
#     && benchmarks/gpu.sh /tmp/gpu_bench; cp /tmp/gpu_bench/summary.md /tmp/gpu_bench/all.tar.gz $OUT/
# Each step writes DIR/NAME.log (its output), DIR/NAME.json (its figures) and, when it fails,
# DIR/NAME.error; a failure is recorded and the next step runs. Steps run in order of importance
# and each gets at most what is left of LLM_GPU_BUDGET_S (default 480 s); one that would get
# under 30 s is skipped. The exit status is 1 when any step failed or was skipped.
# Environment: PYTHON (the interpreter; default python3), LLM_GPU_BUDGET_S,
#   LLM_GPU_SCRIPT_SMOKE=1  the same steps shrunk for a CPU check: configs/tiny.py at seq 128,
#                           blocked vs xla attention at seq 128, decode batches 1 and 4.
set -euo pipefail

DIR=${1:-${OUT:-runs/gpu_bench}}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SMOKE=${LLM_GPU_SCRIPT_SMOKE:-0}
BUDGET_S=${LLM_GPU_BUDGET_S:-480}
MIN_STEP_S=30

if [[ $SMOKE == 1 ]]; then
  default_python=python3
  [[ -x .venv/bin/python ]] && default_python=.venv/bin/python
  PY=${PYTHON:-$default_python}
  export JAX_PLATFORMS=cpu  # a CPU run in an environment with libtpu: no TPU probing
  SEQ=128
  ATTENTION=(--impl blocked --vs xla --batch 2 --seq 128 --heads 4 --kv-heads 2 --head-dim 32)
  TRAIN=("tiny 3 150")  # config, timed steps, timeout (s)
  GENERATE=(tiny "1,4" 150)  # config, batches, timeout (s)
else
  PY=${PYTHON:-python3}
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}  # llama_1b's step is ~50 GB
  SEQ=2048
  ATTENTION=(--impl cudnn --vs xla --batch 4 --seq 2048 --heads 32 --kv-heads 8 --head-dim 64)  # llama_1b's heads
  TRAIN=("llama_1b 5 300" "gpt2_124m 10 180" "small 10 150")
  GENERATE=(llama_1b "1,64" 300)
fi
export PY DIR

# MaxText's GPU XLA flags (its A3 / GPU scripts). Dropped, because XLA no longer has them (they
# abort jax 0.10 at startup): --xla_gpu_graph_level=0 (now --xla_gpu_enable_command_buffer=),
# --xla_gpu_enable_triton_softmax_fusion, --xla_gpu_simplify_all_fp_conversions,
# --xla_gpu_enable_async_{all_gather,reduce_scatter,all_reduce} (always async now).
MAXTEXT_FLAGS=(
  --xla_gpu_enable_latency_hiding_scheduler=true
  --xla_gpu_enable_triton_gemm=false
  --xla_gpu_enable_command_buffer=
  --xla_gpu_enable_highest_priority_async_stream=true
  --xla_gpu_all_reduce_combine_threshold_bytes=134217728
  --xla_gpu_all_gather_combine_threshold_bytes=134217728
  --xla_gpu_reduce_scatter_combine_threshold_bytes=67108864
  --xla_gpu_enable_pipelined_all_gather=true
  --xla_gpu_enable_pipelined_reduce_scatter=true
  --xla_gpu_enable_pipelined_all_reduce=true
  --xla_gpu_enable_while_loop_double_buffering=true
  --xla_gpu_enable_all_gather_combine_by_dim=false
  --xla_gpu_enable_reduce_scatter_combine_by_dim=false
  --xla_disable_hlo_passes=rematerialization
)

: > "$DIR/steps.tsv"
DEADLINE=$((SECONDS + BUDGET_S))

# step NAME TIMEOUT_S COMMAND...: run COMMAND with its output in DIR/NAME.log; a failure (or a
# timeout) is written to DIR/NAME.error and to steps.tsv, and the script goes on.
step() {
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS)) start=$SECONDS rc=0
  shift 2
  rm -f "$DIR/$name.log" "$DIR/$name.json" "$DIR/$name.error"
  if ((left < MIN_STEP_S)); then
    echo "== $name: skipped, ${left}s of the ${BUDGET_S}s budget left" | tee "$DIR/$name.error"
    printf '%s\tskipped\t0\n' "$name" >> "$DIR/steps.tsv"
    return 0
  fi
  if ((limit > left)); then limit=$left; fi
  local shown="$*"
  shown=${shown//$'\n'/ }
  echo "== $name (timeout ${limit}s): ${shown:0:240}"
  timeout --kill-after=10 "$limit" "$@" > "$DIR/$name.log" 2>&1 || rc=$?
  local took=$((SECONDS - start))
  if ((rc == 0)); then
    echo "   ok in ${took}s"
  else
    local why="exit $rc after ${took}s"
    if ((rc == 124 || rc == 137)); then why+=" (timed out at ${limit}s)"; fi
    {
      echo "$why"
      tail -n 30 "$DIR/$name.log"
    } > "$DIR/$name.error"
    echo "   FAILED (exit $rc) in ${took}s: $(grep -v '^[[:space:]]*$' "$DIR/$name.log" | tail -n 1 | cut -c1-200)"
  fi
  printf '%s\t%s\t%s\n' "$name" "$rc" "$took" >> "$DIR/steps.tsv"
}

machine_info() {
  date -u
  uname -srm
  lscpu | grep -m1 'Model name' || true
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
    nvidia-smi > "$DIR/nvidia-smi.txt" 2>&1 || true
  else
    echo "nvidia-smi: not on this machine"
  fi
  "$PY" -c 'import sys, jax; print(jax.devices(), "jax", jax.__version__, "backend", jax.default_backend(), "python", sys.version.split()[0])'
  "$PY" -c 'import flax, optax, ml_collections; print("flax", flax.__version__, "optax", optax.__version__)'
  "$PY" -c 'import llm.cli.main, llm.bench.train, llm.bench.generate, llm.bench.attention; print("llm imports")'
}
export -f machine_info

# The MaxText flags this jax parses: all at once, else one at a time. Writes DIR/xla_flags.txt.
parse_check() { timeout 120 env XLA_FLAGS="$1" "$PY" -c 'import jax; jax.numpy.ones(1).block_until_ready()' > /dev/null 2>&1; }
kept=()
dropped=()
if parse_check "${MAXTEXT_FLAGS[*]}"; then
  kept=("${MAXTEXT_FLAGS[@]}")
else
  for flag in "${MAXTEXT_FLAGS[@]}"; do
    if parse_check "$flag"; then kept+=("$flag"); else dropped+=("$flag"); fi
  done
fi
XLA_ON="${kept[*]}"
{
  echo "$XLA_ON"
  echo "dropped (this jax does not parse them): ${dropped[*]:-none}"
} > "$DIR/xla_flags.txt"
echo "== XLA flags kept: ${#kept[@]} of ${#MAXTEXT_FLAGS[@]}${dropped[*]:+; dropped: ${dropped[*]}}"

train() {  # train CONFIG STEPS TIMEOUT FLAGSET
  local config=$1 steps=$2 limit=$3 flagset=$4 flags=""
  if [[ $flagset == maxtext ]]; then flags=$XLA_ON; fi
  step "train__${config}__${flagset}" "$limit" env XLA_FLAGS="$flags" "$PY" -m llm.cli.main bench train \
    --config "configs/$config.py" --steps "$steps" --json "$DIR/train__${config}__${flagset}.json" \
    --config.data.seq_len="$SEQ" --config.model.max_seq_len="$SEQ" --config.precision.compute=bfloat16 \
    --config.model.attention_impl=auto
}

step machine 180 bash -c machine_info
step attention 180 env XLA_FLAGS= "$PY" -m llm.cli.main bench attention "${ATTENTION[@]}" --json "$DIR/attention.json"
read -r config steps limit <<< "${TRAIN[0]}"
train "$config" "$steps" "$limit" off  # the headline shape first, then its decode, then the rest
step "generate__${GENERATE[0]}" "${GENERATE[2]}" env XLA_FLAGS= "$PY" -m llm.cli.main bench generate \
  --config "configs/${GENERATE[0]}.py" --batches "${GENERATE[1]}" --json "$DIR/generate__${GENERATE[0]}.json" \
  --config.precision.compute=bfloat16
train "$config" "$steps" "$limit" maxtext
for entry in "${TRAIN[@]:1}"; do
  read -r config steps limit <<< "$entry"
  train "$config" "$steps" "$limit" off
  train "$config" "$steps" "$limit" maxtext
done

"$PY" -m llm.bench.gpu_table "$DIR" || echo "the summary failed; the figures are in $DIR/*.json"
# One archive of everything (a lent device returns only a few files: summary.md and this).
tar czf "$DIR.tar.gz" -C "$(dirname "$DIR")" "$(basename "$DIR")" && mv "$DIR.tar.gz" "$DIR/all.tar.gz"
failed=$(awk -F'\t' '$2 != "0"' "$DIR/steps.tsv" | wc -l)
echo "total: $(wc -l < "$DIR/steps.tsv") steps, $failed failed or skipped, ${SECONDS}s; everything is in $DIR"
((failed == 0))
