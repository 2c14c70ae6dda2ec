#!/usr/bin/env bash
# The README's main job on one machine: create .venv if it is missing, install the package,
# and run the quickstart (corpus -> tokenizer -> pretrain -> generate -> LoRA SFT -> generate -> report).
#
# Usage: launch/local.sh [--workdir DIR] [--venv DIR] [--python PY] [--dry-run] [-- EXTRA QUICKSTART ARGS]
#   --workdir DIR   where the run lives (default runs/quickstart)
#   --venv DIR      the virtual environment (default .venv in the repository)
#   --python PY     the interpreter that creates it (default python3; needs 3.11+)
#   --dry-run       print the commands instead of running them
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/common.sh
source "$REPO/launch/common.sh"

WORKDIR=runs/quickstart
VENV=$REPO/.venv
PYTHON=python3
EXTRA=()

while (($#)); do
  case $1 in
    --workdir) WORKDIR=${2:?--workdir needs a directory}; shift 2 ;;
    --venv) VENV=${2:?--venv needs a directory}; shift 2 ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1; see --help" ;;
  esac
done

cd "$REPO"
if [[ ! -x $VENV/bin/python ]]; then
  need "$PYTHON" "install Python 3.11+ or pass --python"
  run "$PYTHON" -m venv "$VENV"
fi
run "$VENV/bin/python" -m pip install --quiet --upgrade pip
run "$VENV/bin/python" -m pip install --quiet -e ".[test]"
run "$VENV/bin/llm" quickstart --workdir "$WORKDIR" "${EXTRA[@]}"
