#!/usr/bin/env bash
# Runs Sandra's whole test suite: what README.md calls "run the tests", and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo test --workspace --all-targets --locked
