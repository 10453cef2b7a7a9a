#!/usr/bin/env bash
# The main job: set up .venv, then for each of --seeds seeds (default 3) generate that seed's shapes world, train
# tiny-CLIP and tiny-SPARO with the measured recipe through torchrun (OpenCLIP's training loop), evaluate both
# (clean binding test, compositional zero-shot, compositionality sets with their controls, retrieval) and write
# runs/quickstart/report.md, results.json and pictures. Options: --seeds N, --epochs E, --out DIR, --data DIR,
# --write-docs; see `python -m sparo_clip.quickstart --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s.%N)
./scripts/setup.sh
# how long the set-up took, for --write-docs (docs/quickstart.md reports the whole command's time)
SPARO_CLIP_SETUP_SECONDS=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
export SPARO_CLIP_SETUP_SECONDS
exec .venv/bin/python -m sparo_clip.quickstart "$@"
