#!/usr/bin/env bash
# Shared by scripts/train_*.sh: the reference recipe (one node), from environment variables.
#
# Required:  CC12M_DIR  folder with CC12M webdataset shards 00000.tar..01242.tar (+ sizes.json)
#            CC3M_DIR   folder with CC3M webdataset shards 00000.tar..00331.tar (+ sizes.json)
#            IMAGENET_VAL  ImageNet validation folder (1000 class sub-folders) for zero-shot eval
# Optional:  IMAGENET_V2 (folder), NUM_GPUS (default: all GPUs nvidia-smi lists), LOGS_DIR (default ./logs),
#            RUN_NAME (default: the script's name), MASTER_PORT (default 29500), PYTHON (default .venv/bin/python),
#            DRY_RUN=1 prints the command instead of running it.
# Extra arguments are passed to sparo_clip.train after the recipe's flags (later flags win).
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

# GPUs per node: NUM_GPUS, else what nvidia-smi lists
num_gpus() {
  local gpus=${NUM_GPUS:-}
  if [ -z "$gpus" ]; then
    command -v nvidia-smi >/dev/null 2>&1 || die "NUM_GPUS is not set and nvidia-smi is not available: set NUM_GPUS"
    gpus=$(nvidia-smi -L | grep -c '^GPU') || true
    [ "$gpus" -gt 0 ] || die "no GPU found by nvidia-smi: set NUM_GPUS"
  fi
  echo "$gpus"
}

# the project's Python (PYTHON overrides)
venv_python() {
  local here; here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  echo "${PYTHON:-$here/.venv/bin/python}"
}

sparo_train() {
  local run_name=$1; shift
  local model=$1; shift
  # model-specific flags come next, up to "--"; the rest are the user's extra arguments
  local model_flags=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do model_flags+=("$1"); shift; done
  [ $# -gt 0 ] && shift

  [ -n "${CC12M_DIR:-}" ] || die "CC12M_DIR is not set: the folder holding CC12M shards 00000.tar..01242.tar"
  [ -n "${CC3M_DIR:-}" ] || die "CC3M_DIR is not set: the folder holding CC3M shards 00000.tar..00331.tar"
  [ -n "${IMAGENET_VAL:-}" ] || die "IMAGENET_VAL is not set: the ImageNet validation folder (1000 class sub-folders)"
  [ -d "$CC12M_DIR" ] || die "CC12M_DIR=$CC12M_DIR is not a directory"
  [ -d "$CC3M_DIR" ] || die "CC3M_DIR=$CC3M_DIR is not a directory"
  [ -d "$IMAGENET_VAL" ] || die "IMAGENET_VAL=$IMAGENET_VAL is not a directory"

  local gpus python
  gpus=$(num_gpus)
  python=$(venv_python)
  local v2=()
  [ -n "${IMAGENET_V2:-}" ] && v2=(--imagenet-v2 "$IMAGENET_V2")

  local cmd=(
    "$python" -m torch.distributed.run --nproc_per_node "$gpus" --master_port "${MASTER_PORT:-29500}"
    -m sparo_clip.train
    --model "$model"
    --train-data "$CC12M_DIR/{00000..01242}.tar::$CC3M_DIR/{00000..00331}.tar"
    --dataset-type webdataset
    --train-num-samples 12825420
    --imagenet-val "$IMAGENET_VAL" "${v2[@]}"
    --warmup 3600 --batch-size 512 --accum-freq 4 --wd 0.5 --epochs 25 --workers 4
    --precision amp_bfloat16 --seed 0
    --grad-checkpointing --local-loss --gather-with-grad
    --save-frequency 1 --zeroshot-frequency 1 --save-most-recent --resume latest
    --log-every-n-steps 1
    --logs-dir "${LOGS_DIR:-./logs}" --name "${RUN_NAME:-$run_name}"
    "${model_flags[@]}"
    "$@"
  )
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
  else
    exec "${cmd[@]}"
  fi
}
