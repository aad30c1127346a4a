#!/usr/bin/env bash
# The local chat engine under concurrent conversations: aggregate generated tokens/s with 1, 4
# and 8 simultaneous short WhatsApp questions (~150-token prompts, greedy) against one reply at
# a time (`llm.parallel = 1`) in the same run, with per-reply latency (p50, max).
#
#   scripts/bench-batch.sh MODEL.gguf [GEN_TOKENS]
#
# BENCH_CONC (default "1,4,8") and BENCH_PARALLEL (default 8) tune it; PROFILE=dev reuses the
# test build (dependencies at opt-level 2) instead of a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "$1")
gen=${2:-96}
if [ "${PROFILE:-release}" = dev ]; then
  cargo test -p sandra-models --bench bench_batch --locked -- --bench "$model" "$gen" 2>/dev/null | grep -E '^(batch|ratio|threads)'
else
  cargo bench -p sandra-models --bench bench_batch --locked -- "$model" "$gen" 2>/dev/null | grep -E '^(batch|ratio|threads)'
fi
