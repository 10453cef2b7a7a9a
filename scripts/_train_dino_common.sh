#!/usr/bin/env bash
# Shared by scripts/train_dino_*.sh: DINO's reference recipe for ViT-S/16 on ImageNet (one node).
#
# Required:  IMAGENET_TRAIN  ImageNet training folder (1000 wnid sub-folders of JPEGs)
# Optional:  NUM_GPUS (default: all GPUs nvidia-smi lists), LOGS_DIR (default ./logs), RUN_NAME (default: the
#            script's run name), MASTER_PORT (default 29500), PYTHON (default .venv/bin/python),
#            DRY_RUN=1 prints the command instead of running it.
# Extra arguments are passed to sparo_clip.dino.train after the recipe's flags (later flags win).
set -euo pipefail

# die, num_gpus, venv_python
source "$(dirname "${BASH_SOURCE[0]}")/_train_common.sh"

dino_train() {
  local run_name=$1; shift
  local model=$1; shift
  [ -n "${IMAGENET_TRAIN:-}" ] || die "IMAGENET_TRAIN is not set: the ImageNet training folder (1000 class sub-folders)"
  [ -d "$IMAGENET_TRAIN" ] || die "IMAGENET_TRAIN=$IMAGENET_TRAIN is not a directory"
  local gpus python
  gpus=$(num_gpus)
  python=$(venv_python)
  # DINO ViT-S/16: global batch 1024 (= 8 x 128), 100 epochs, lr 5e-4 x 1024/256, 10 warm-up epochs,
  # wd 0.04 -> 0.4, clip 3.0, teacher momentum 0.996 -> 1, teacher temp 0.04, 2 x 224 + 8 x 96 crops.
  local cmd=(
    "$python" -m torch.distributed.run --nproc_per_node "$gpus" --master_port "${MASTER_PORT:-29500}"
    -m sparo_clip.dino.train
    --model "$model"
    --train-data "$IMAGENET_TRAIN" --dataset-type folder
    --batch-size $((1024 / gpus)) --epochs 100 --lr 5e-4 --min-lr 1e-6 --warmup-epochs 10
    --wd 0.04 --wd-end 0.4 --clip-grad 3.0 --freeze-last-layer 1
    --momentum-teacher 0.996 --teacher-temp 0.04 --warmup-teacher-temp 0.04 --warmup-teacher-temp-epochs 30
    --local-crops 8 --global-crop-scale 0.4,1.0 --local-crop-scale 0.05,0.4
    --precision amp_bf16 --workers 10 --seed 0 --save-every 1000 --resume auto
    --output "${LOGS_DIR:-./logs}/${RUN_NAME:-$run_name}"
    "$@"
  )
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
  else
    exec "${cmd[@]}"
  fi
}
