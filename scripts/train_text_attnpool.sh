#!/usr/bin/env bash
# Baseline: ViT-B-32 whose text tower pools with attention over the tokens up to end-of-text, then ln_final
# and its projection (the reference text attentional pooling; registered as ViT-B-32-textpool).
source "$(dirname "$0")/_train_common.sh"
sparo_train vitb32-text-attnpool ViT-B-32 --override-model-config '{"text_pool_cfg": {}}' -- "$@"
