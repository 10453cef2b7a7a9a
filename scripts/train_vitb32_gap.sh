#!/usr/bin/env bash
# Baseline: ViT-B-32 whose vision tower global-average-pools the patch tokens, then applies ln_post (the
# reference's GAP variant; OpenCLIP 2.20 called it global_average_pool and normalised after pooling, OpenCLIP
# 3.3 spells it pool_type=avg + final_ln_after_pool).
source "$(dirname "$0")/_train_common.sh"
sparo_train vitb32-gap ViT-B-32 --override-model-config '{"vision_cfg": {"pool_type": "avg", "final_ln_after_pool": true}}' -- "$@"
