#!/usr/bin/env bash
# Run an `llm` command as a GKE workload on a TPU slice through xpk (pip install xpk).
#
# Usage:
#   launch/xpk.sh --cluster CLUSTER --workload NAME --zone ZONE --tpu-type v5p-64 [options] -- llm train ...
# Options:
#   --project ID             gcloud project (default: gcloud's configured project)
#   --num-slices N           TPU slices (default 1)
#   --spot                   create the cluster's node pools on spot capacity
#   --max-restarts N         JobSet restarts after a failure or preemption (default 10)
#   --base-docker-image IMG  image xpk layers this repository onto (default python:3.11-slim)
#   --docker-image IMG       a prebuilt image holding the repository (no layering)
#   --delete                 delete the workload when it ends
#   --delete-cluster         also delete the cluster when the workload ends
#   --dry-run                print the commands instead of running them
#
# Steps: create the cluster unless it exists; submit the workload (xpk copies this directory
# into the image; the container installs requirements-tpu.txt and runs the command on every
# worker); follow worker 0's log; wait for the result. A preempted or failed slice is
# restarted by JobSet up to --max-restarts times and re-runs the same command, which resumes
# from the workdir's checkpoints (keep --workdir on gs://).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/common.sh
source "$REPO/launch/common.sh"

CLUSTER="" WORKLOAD="" ZONE="" PROJECT="" TPU_TYPE=""
NUM_SLICES=1 SPOT=0 MAX_RESTARTS=10 DELETE=0 DELETE_CLUSTER=0
BASE_IMAGE=python:3.11-slim DOCKER_IMAGE=""
CMD=()

while (($#)); do
  case $1 in
    --cluster) CLUSTER=${2:?--cluster needs a value}; shift 2 ;;
    --workload) WORKLOAD=${2:?--workload needs a value}; shift 2 ;;
    --zone) ZONE=${2:?--zone needs a value}; shift 2 ;;
    --project) PROJECT=${2:?--project needs a value}; shift 2 ;;
    --tpu-type) TPU_TYPE=${2:?--tpu-type needs a value}; shift 2 ;;
    --num-slices) NUM_SLICES=${2:?--num-slices needs a number}; shift 2 ;;
    --max-restarts) MAX_RESTARTS=${2:?--max-restarts needs a number}; shift 2 ;;
    --base-docker-image) BASE_IMAGE=${2:?--base-docker-image needs an image}; shift 2 ;;
    --docker-image) DOCKER_IMAGE=${2:?--docker-image needs an image}; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --delete) DELETE=1; shift ;;
    --delete-cluster) DELETE=1; DELETE_CLUSTER=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; CMD=("$@"); break ;;
    *) die "unknown option $1; see --help" ;;
  esac
done

[[ -n $CLUSTER ]] || die "--cluster is required (the GKE cluster to create or reuse)"
[[ -n $WORKLOAD ]] || die "--workload is required (a name for this run, lowercase letters, digits and -)"
[[ $WORKLOAD =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--workload=$WORKLOAD must be lowercase letters, digits and -"
[[ -n $ZONE ]] || die "--zone is required, e.g. --zone us-east5-a"
[[ -n $TPU_TYPE ]] || die "--tpu-type is required, e.g. v5p-64, v5litepod-16 or v6e-64"
((${#CMD[@]})) || die "give the command to run after --, e.g. -- llm train --config configs/llama3_8b.py --workdir gs://bucket/run"
[[ $NUM_SLICES =~ ^[1-9][0-9]*$ ]] || die "--num-slices=$NUM_SLICES is not a positive number"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts=$MAX_RESTARTS is not a number"
TPU_TYPE=${TPU_TYPE/#v5e-/v5litepod-}
need xpk "pip install xpk (it also needs gcloud, kubectl and docker)"
need kubectl "install kubectl (gcloud components install kubectl)"

WHERE=(--zone "$ZONE")
[[ -n $PROJECT ]] && WHERE+=(--project "$PROJECT")
GCLOUD_PROJECT=()
[[ -n $PROJECT ]] && GCLOUD_PROJECT=(--project "$PROJECT")

# 1. The cluster: reuse it when it exists.
existing=$(query gcloud container clusters list "${GCLOUD_PROJECT[@]}" --filter="name=$CLUSTER" --format='value(name)' || true)
if [[ -n $existing ]]; then
  note "reusing cluster $CLUSTER"
else
  spot=()
  ((SPOT)) && spot=(--spot)
  run xpk cluster create --cluster "$CLUSTER" --tpu-type "$TPU_TYPE" --num-slices "$NUM_SLICES" "${WHERE[@]}" "${spot[@]}"
fi

# 2. The workload: install on start (the image holds the code), then the command.
inner=$(quote_cmd "${CMD[@]}")
container_cmd="set -e; python3 -m pip install -q -r requirements-tpu.txt && python3 -m pip install -q -e . && $inner"
image=(--base-docker-image "$BASE_IMAGE" --script-dir "$REPO")
[[ -n $DOCKER_IMAGE ]] && image=(--docker-image "$DOCKER_IMAGE")
run xpk workload create --cluster "$CLUSTER" --workload "$WORKLOAD" --tpu-type "$TPU_TYPE" \
  --num-slices "$NUM_SLICES" "${WHERE[@]}" --max-restarts "$MAX_RESTARTS" "${image[@]}" \
  --command "bash -c $(quote_word "$container_cmd")"

# 3. Follow worker 0 of slice 0, then wait for the final status (0 = success).
selector="jobset.sigs.k8s.io/jobset-name=$WORKLOAD,jobset.sigs.k8s.io/job-index=0,batch.kubernetes.io/job-completion-index=0"
run kubectl wait --for=condition=Ready pod --selector "$selector" --timeout=24h || true
run kubectl logs --follow --selector "$selector" --tail=-1 || true
status=0
run xpk workload list --cluster "$CLUSTER" "${WHERE[@]}" --wait-for-job-completion "$WORKLOAD" || status=$?
((status == 0)) || note "workload $WORKLOAD did not succeed (exit $status); logs: kubectl logs --selector $selector"

if ((DELETE)); then
  run xpk workload delete --cluster "$CLUSTER" --workload "$WORKLOAD" "${WHERE[@]}"
fi
if ((DELETE_CLUSTER)); then
  run xpk cluster delete --cluster "$CLUSTER" "${WHERE[@]}" --force
fi
exit "$status"
