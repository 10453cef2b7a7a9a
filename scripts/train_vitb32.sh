#!/usr/bin/env bash
# Baseline OpenCLIP ViT-B-32 with the reference recipe. See scripts/_train_common.sh for the environment.
source "$(dirname "$0")/_train_common.sh"
sparo_train vitb32 ViT-B-32 -- "$@"
