#!/usr/bin/env bash
# Run an `llm` command on every worker of a Cloud TPU VM slice, creating or reusing it by name.
#
# Usage:
#   launch/tpu_vm.sh --name NAME --zone ZONE --type v5p-64 [options] -- llm train --config ... --workdir gs://...
# Options:
#   --project ID        gcloud project (default: gcloud's configured project)
#   --type TYPE         accelerator type (v5p-64, v5litepod-16 / v5e-16, v6e-64, v4-32); needed to create
#   --version VERSION   TPU software version (default: the one matching --type)
#   --queued            create through a queued resource (waits for capacity instead of failing)
#   --spot              spot capacity: cheaper, preemptible
#   --max-restarts N    how many times to recreate and re-run after a preemption (default 5)
#   --python PY         interpreter on the workers for the venv (default python3.11)
#   --delete            delete the TPU (and its queued resource) when the command ends
#   --dry-run           print the commands instead of running them
#
# Steps: create or reuse the TPU; copy this repository (without .venv, runs, .git) to every
# worker; install requirements-tpu.txt into ~/llm-venv on all of them; run the command on
# --worker=all (each worker appends to ~/llm/run.log, worker 0 also streams it here). If the
# command fails and the TPU was preempted, it is recreated and the same command re-run:
# `llm train` resumes from the workdir's checkpoints, so keep --workdir on gs://.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/common.sh
source "$REPO/launch/common.sh"

NAME="" ZONE="" PROJECT="" TYPE="" VERSION="" PY=python3.11
QUEUED=0 SPOT=0 DELETE=0 MAX_RESTARTS=5
POLL_SECONDS=${POLL_SECONDS:-30}
CMD=()

while (($#)); do
  case $1 in
    --name) NAME=${2:?--name needs a value}; shift 2 ;;
    --zone) ZONE=${2:?--zone needs a value}; shift 2 ;;
    --project) PROJECT=${2:?--project needs a value}; shift 2 ;;
    --type) TYPE=${2:?--type needs a value}; shift 2 ;;
    --version) VERSION=${2:?--version needs a value}; shift 2 ;;
    --python) PY=${2:?--python needs a value}; shift 2 ;;
    --max-restarts) MAX_RESTARTS=${2:?--max-restarts needs a number}; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --delete) DELETE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; CMD=("$@"); break ;;
    *) die "unknown option $1; see --help" ;;
  esac
done

[[ -n $NAME ]] || die "--name is required (the TPU VM to create or reuse)"
[[ -n $ZONE ]] || die "--zone is required, e.g. --zone us-east5-a"
((${#CMD[@]})) || die "give the command to run after --, e.g. -- llm train --config configs/llama3_8b.py --workdir gs://bucket/run"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts=$MAX_RESTARTS is not a number"
# gcloud spells v5e as v5litepod.
TYPE=${TYPE/#v5e-/v5litepod-}
if [[ -z $VERSION && -n $TYPE ]]; then
  case $TYPE in
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    *) die "unknown --type $TYPE; use v4-N, v5p-N, v5litepod-N (v5e-N) or v6e-N, or pass --version" ;;
  esac
fi
need gcloud "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"

WHERE=(--zone "$ZONE")
[[ -n $PROJECT ]] && WHERE+=(--project "$PROJECT")
TARBALL=${TMPDIR:-/tmp}/llm-code-$NAME.tar.gz
REMOTE_DIR=llm

tpu_state() {
  query gcloud compute tpus tpu-vm describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null || true
}

queued_state() {
  query gcloud compute tpus queued-resources describe "$NAME" "${WHERE[@]}" --format='value(state.state)' 2>/dev/null || true
}

create() {
  [[ -n $TYPE ]] || die "TPU $NAME does not exist; pass --type (e.g. v5p-64) to create it"
  local spot=()
  ((SPOT)) && spot=(--spot)
  note "creating $TYPE $NAME in $ZONE"
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources create "$NAME" --node-id "$NAME" "${WHERE[@]}" \
      --accelerator-type "$TYPE" --runtime-version "$VERSION" "${spot[@]}"
  else
    run gcloud compute tpus tpu-vm create "$NAME" "${WHERE[@]}" \
      --accelerator-type "$TYPE" --version "$VERSION" "${spot[@]}"
  fi
}

delete() {
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources delete "$NAME" "${WHERE[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${WHERE[@]}" --quiet
  fi
}

# Poll until the TPU is usable (a queued resource can wait hours for capacity).
wait_ready() {
  [[ $DRY_RUN == 1 ]] && return 0
  local state
  while true; do
    if ((QUEUED)); then state=$(queued_state); else state=$(tpu_state); fi
    case $state in
      READY | ACTIVE) return 0 ;;
      FAILED | SUSPENDED | PREEMPTED | TERMINATED) die "TPU $NAME is $state while starting; see gcloud for the reason" ;;
    esac
    note "waiting for $NAME (state ${state:-unknown})"
    sleep "$POLL_SECONDS"
  done
}

# Create, reuse, restart or replace the TPU so that it is ready.
ensure_tpu() {
  local state
  if ((QUEUED)); then state=$(queued_state); else state=$(tpu_state); fi
  case $state in
    READY | ACTIVE) note "reusing $NAME ($state)" ;;
    "") create ;;
    PREEMPTED | TERMINATED | SUSPENDED | SUSPENDING | FAILED)
      note "$NAME is $state: deleting and recreating it"
      delete
      create
      ;;
    STOPPED) run gcloud compute tpus tpu-vm start "$NAME" "${WHERE[@]}" ;;
    *) note "$NAME is $state" ;;
  esac
  wait_ready
}

# Ship the working tree (uncommitted edits included) and install it on every worker.
copy_code() {
  run tar -czf "$TARBALL" --exclude=./.venv --exclude=./runs --exclude=./.git -C "$REPO" .
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:llm-code.tar.gz" --worker=all "${WHERE[@]}"
  local setup
  setup="set -e; mkdir -p ~/$REMOTE_DIR && tar -xzf ~/llm-code.tar.gz -C ~/$REMOTE_DIR"
  setup+="; command -v $PY >/dev/null || (sudo apt-get update -qq && sudo apt-get install -y -qq $PY $PY-venv)"
  setup+="; [ -x ~/llm-venv/bin/python ] || $PY -m venv ~/llm-venv"
  setup+="; cd ~/$REMOTE_DIR && ~/llm-venv/bin/pip install -q -r requirements-tpu.txt && ~/llm-venv/bin/pip install -q -e ."
  run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${WHERE[@]}" --command "$setup"
}

# Every worker runs the command; worker 0 streams its output, the others only log it.
remote_command() {
  local cmd
  cmd=$(quote_cmd "${CMD[@]}")
  printf '%s' "set -o pipefail; cd ~/$REMOTE_DIR && export PATH=~/llm-venv/bin:\$PATH; "
  printf '%s' "w=\$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number); "
  printf '%s' "if [ \"\$w\" = 0 ]; then $cmd 2>&1 | tee -a run.log; else $cmd >> run.log 2>&1; fi"
}

ensure_tpu
copy_code
REMOTE=$(remote_command)
restarts=0
status=0
while true; do
  status=0
  run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${WHERE[@]}" --command "$REMOTE" || status=$?
  ((status == 0)) && break
  if ((QUEUED)); then state=$(queued_state); else state=$(tpu_state); fi
  case $state in
    READY | ACTIVE)
      if ((status != 255)); then
        note "the command failed with exit code $status on a healthy TPU; not retrying (see ~/$REMOTE_DIR/run.log on the workers)"
        break
      fi
      what="lost the ssh connection"
      ;;
    *) what="was preempted (state ${state:-gone})" ;;
  esac
  if ((restarts >= MAX_RESTARTS)); then
    note "$NAME $what; giving up after $restarts restarts"
    break
  fi
  restarts=$((restarts + 1))
  note "$NAME $what: restart $restarts of $MAX_RESTARTS, re-running the same command (it resumes from its checkpoints)"
  if [[ $what == "lost the ssh connection" ]]; then
    continue
  fi
  ensure_tpu
  copy_code
done

if ((DELETE)); then
  note "deleting $NAME (--delete)"
  delete
fi
exit "$status"
