#!/usr/bin/env bash
# Set up .venv (reused when up to date), lint, then run the whole test suite.
# Extra arguments go to pytest, e.g. ./scripts/test.sh -m "not slow" -k readout
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
exec .venv/bin/python -m pytest "$@"
