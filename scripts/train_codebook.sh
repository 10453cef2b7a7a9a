#!/usr/bin/env bash
# Baseline: ViT-B-32 with the FDT codebook read-out (16384 shared codes of width 4096, sparsemax weights,
# temperature 1000; the reference codebook variant; the same model is registered as ViT-B-32-codebook).
source "$(dirname "$0")/_train_common.sh"
sparo_train vitb32-codebook ViT-B-32 \
  --override-model-config '{"embed_dim": 4096, "codebook_cfg": {"num_codes": 16384, "temperature": 1000.0}}' -- "$@"
