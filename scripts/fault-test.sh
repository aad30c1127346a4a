#!/usr/bin/env bash
# The long fault-injection test: the fake Graph API answers a shuffled mix of 5xx envelopes,
# hangs, dropped connections, 130429, 131056 and 190 (plus a token rotation) for a while, then
# recovers; every reply must go out exactly once within Meta's rate and pair limits, and
# permanent errors must not be retried. The default `cargo test` runs a small version.
# Reproduce a run: pass the SANDRA_FAULT_SEED it printed.
set -euo pipefail
cd "$(dirname "$0")/.."
export SANDRA_FAULT_MESSAGES="${SANDRA_FAULT_MESSAGES:-1000}"
export SANDRA_FAULT_CONVERSATIONS="${SANDRA_FAULT_CONVERSATIONS:-200}"
export SANDRA_FAULT_COUNT="${SANDRA_FAULT_COUNT:-600}"
exec cargo test --test it --locked -- --exact faults::faults_clear_and_every_reply_goes_out_once --nocapture --include-ignored
