#!/usr/bin/env bash
# Baseline: ViT-B-32 whose vision tower global-average-pools the patch tokens (reference GAP variant;
# the reference's OpenCLIP 2.20 called it global_average_pool, OpenCLIP 3.3 calls it pool_type=avg).
source "$(dirname "$0")/_train_common.sh"
sparo_train vitb32-gap ViT-B-32 --override-model-config '{"vision_cfg": {"pool_type": "avg"}}' -- "$@"
