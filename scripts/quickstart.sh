#!/usr/bin/env bash
# The main job: set up .venv, generate the shapes world, train a tiny SPARO model and its CLIP twin for the same
# fixed number of steps through torchrun (OpenCLIP's training loop), evaluate both (compositional zero-shot,
# compositionality and retrieval split by novelty, slot selection), and write runs/quickstart/report.md,
# results.json and slot-attention pictures. Options: --steps N (per model, default 70) or --minutes M (a budget
# calibrated on this machine), --out DIR, --data DIR; see `python -m sparo_clip.quickstart --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m sparo_clip.quickstart "$@"
