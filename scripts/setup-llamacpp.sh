#!/usr/bin/env bash
# Optional: builds llama-cpp-python from source and installs it into .venv (the `llamacpp` backend).
# About 6 minutes on 2 cores.
#
# Why not `pip install 'synthalign[llamacpp]'` as is: llama.cpp builds with -march=native by
# default, and on a CPU that reports AMX (recent Xeons) that compiles ggml's AMX kernels. Where the
# OS does not grant AMX tiles (many VMs), every prompt of more than one token segfaults in
# llama_decode. A prebuilt wheel crashed here the same way. This script builds a portable AVX2 build
# instead, and skips pip's wheel cache, which would otherwise reuse an earlier native build silently.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "no .venv: run bash scripts/setup.sh first" >&2; exit 1; }
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
export CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF"
# uninstall first: pip would keep an installed build of the same version, however it was built
.venv/bin/pip uninstall -q -y llama-cpp-python 2>/dev/null || true
.venv/bin/pip install -q --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==$VERSION"
.venv/bin/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed')"
