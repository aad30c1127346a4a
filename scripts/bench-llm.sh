#!/usr/bin/env bash
# candle (Sandra's local chat engine) beside llama.cpp on the same GGUF: load time, prefill and
# generation tokens/s (greedy, same ~220-token prompt, median of 3), peak RSS. Both sides use
# 2 threads. BENCH_RUNS (default 3) sets the number of runs.
#
#   scripts/bench-llm.sh MODEL.gguf [GEN_TOKENS]
#
# llama.cpp comes from llama-cpp-python in $LLAMA_PY (a python with it installed; default
# python3), e.g.: python3 -m venv /tmp/lc && CMAKE_ARGS="-DGGML_NATIVE=ON" \
#   /tmp/lc/bin/pip install llama-cpp-python==0.3.36 ; LLAMA_PY=/tmp/lc/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "$1")
gen=${2:-128}
# PROFILE=dev reuses the test build (dependencies at opt-level 2) instead of a release build.
if [ "${PROFILE:-release}" = dev ]; then
  cargo test -p sandra-models --bench bench_llm --locked -- --bench "$model" "$gen" 2>/dev/null | grep '^candle'
else
  cargo bench -p sandra-models --bench bench_llm --locked -- "$model" "$gen" 2>/dev/null | grep '^candle'
fi
if "${LLAMA_PY:-python3}" -c 'import llama_cpp' 2>/dev/null; then
  "${LLAMA_PY:-python3}" scripts/bench-llm-llamacpp.py "$model" "$gen"
  "${LLAMA_PY:-python3}" scripts/bench-llm-llamacpp.py "$model" "$gen" --no-mmap
else
  echo "llama.cpp: skipped (no llama_cpp module in ${LLAMA_PY:-python3})"
fi
