#!/usr/bin/env bash
# Runs the whole test suite offline, slow integration tests included (as CI does).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0  # the suite's local test Hub answers on loopback
# distilabel runs several step processes at once; one torch thread each avoids oversubscribing 2 cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/ruff check . || exit 1
.venv/bin/ruff format --check . || exit 1
.venv/bin/python -m pytest -q --durations=25 "$@"
status=$?
[ "$status" -eq 5 ] && { echo "no tests collected"; exit 1; }
exit "$status"
