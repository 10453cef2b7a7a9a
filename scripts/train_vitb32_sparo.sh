#!/usr/bin/env bash
# ViT-B-32-SPARO (L = V = 64) with the reference recipe, within ViT-B-32's parameter budget.
source "$(dirname "$0")/_train_common.sh"
sparo_train vitb32-sparo ViT-B-32-SPARO --max-params 151277313 -- "$@"
