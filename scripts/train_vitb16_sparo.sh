#!/usr/bin/env bash
# ViT-B-16-SPARO (L = V = 64) with the reference recipe, within ViT-B-16's parameter budget.
source "$(dirname "$0")/_train_common.sh"
sparo_train vitb16-sparo ViT-B-16-SPARO --max-params 149620737 -- "$@"
