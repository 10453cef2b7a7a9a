#!/usr/bin/env bash
# Fine-tune a pretrained ViT-B-32 (OpenCLIP checkpoint) into ViT-B-32-SPARO, in two phases:
#   1. read-out warm-up: both towers locked, only the two SPARO read-outs (and the logit scale) train;
#      --lock-image-unlocked-groups 1 / --lock-text-unlocked-layers 1 keep exactly the read-outs trainable;
#   2. full fine-tuning of everything, starting from the warm-up's last checkpoint.
# Required (besides _train_common.sh's CC12M_DIR, CC3M_DIR, IMAGENET_VAL):
#   INIT_FROM          the pretrained ViT-B-32 checkpoint (a .pt / .bin / .safetensors file)
# Optional: WARMUP_EPOCHS (default 1), WARMUP_LR (default 1e-3), FINETUNE_EPOCHS (default 5),
#           FINETUNE_LR (default 1e-5), RUN_NAME (default finetune-vitb32-sparo; phases add -warmup / -full).
# Extra arguments go to both phases. With DRY_RUN=1 both commands are printed.
source "$(dirname "$0")/_train_common.sh"

[ -n "${INIT_FROM:-}" ] || die "INIT_FROM is not set: the pretrained ViT-B-32 checkpoint to start from"
[ -f "$INIT_FROM" ] || die "INIT_FROM=$INIT_FROM is not a file"

name=${RUN_NAME:-finetune-vitb32-sparo}
logs=${LOGS_DIR:-./logs}
warmup_ckpt="$logs/$name-warmup/checkpoints/epoch_latest.pt"

(
  RUN_NAME="$name-warmup" sparo_train "$name-warmup" ViT-B-32-SPARO --max-params 151277313 \
    --init-from "$INIT_FROM" \
    --lock-image --lock-image-unlocked-groups 1 --lock-text --lock-text-unlocked-layers 1 \
    --epochs "${WARMUP_EPOCHS:-1}" --lr "${WARMUP_LR:-1e-3}" --warmup 500 \
    -- "$@"
)
[ "${DRY_RUN:-0}" = 1 ] || [ -f "$warmup_ckpt" ] || die "the warm-up left no checkpoint at $warmup_ckpt"
RUN_NAME="$name-full" sparo_train "$name-full" ViT-B-32-SPARO --max-params 151277313 \
  --init-from "$warmup_ckpt" \
  --epochs "${FINETUNE_EPOCHS:-5}" --lr "${FINETUNE_LR:-1e-5}" --warmup 500 \
  -- "$@"
