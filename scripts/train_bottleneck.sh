#!/usr/bin/env bash
# Baseline: ViT-B-32 whose towers project to a 512-wide bottleneck, then Linear(512, 4096) per tower
# (the reference bottleneck variant; the same model is registered as ViT-B-32-bottleneck).
source "$(dirname "$0")/_train_common.sh"
sparo_train vitb32-bottleneck ViT-B-32 \
  --override-model-config '{"embed_dim": 4096, "bottleneck_cfg": {"bottleneck_dim": 512}}' -- "$@"
