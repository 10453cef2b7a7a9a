#!/usr/bin/env bash
# SPARO-DINO ViT-S/16 (L = V = 64, last block dropped: parameter parity with DINO ViT-S/16), same recipe.
source "$(dirname "$0")/_train_dino_common.sh"
dino_train dino-vits16-sparo vit_small_patch16_sparo_dino "$@"
