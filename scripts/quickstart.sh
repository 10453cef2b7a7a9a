#!/usr/bin/env bash
# The main job: set up .venv, generate the shapes world, train a tiny SPARO model and its CLIP twin with the
# same budget through torchrun (OpenCLIP's training loop), evaluate both, and write runs/quickstart/report.md,
# results.json and slot-attention pictures. Options: --minutes M (training budget for both, default 8),
# --out DIR, --data DIR; see `python -m sparo_clip.quickstart --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m sparo_clip.quickstart "$@"
