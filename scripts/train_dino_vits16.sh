#!/usr/bin/env bash
# DINO ViT-S/16 (class-token read-out) with DINO's reference recipe: the baseline of SPARO-DINO.
source "$(dirname "$0")/_train_dino_common.sh"
dino_train dino-vits16 vit_small_patch16_dino "$@"
