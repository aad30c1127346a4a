#!/usr/bin/env bash
# The full crash test: the real binary SIGKILLed at random moments while concurrent clients post
# signed webhooks, then run to quiescence and checked (every acknowledged message answered
# exactly once, nothing sent twice, no history lost). The default `cargo test` runs a small
# version; this one is at least 10,000 webhooks over 2,000 conversations with 10 kills.
# Override any size: SANDRA_CRASH_MESSAGES=20000 scripts/crash-test.sh
# Reproduce a run: pass the SANDRA_CRASH_SEED it printed.
set -euo pipefail
cd "$(dirname "$0")/.."
export SANDRA_CRASH_MESSAGES="${SANDRA_CRASH_MESSAGES:-10000}"
export SANDRA_CRASH_CONVERSATIONS="${SANDRA_CRASH_CONVERSATIONS:-2000}"
export SANDRA_CRASH_KILLS="${SANDRA_CRASH_KILLS:-10}"
export SANDRA_CRASH_CLIENTS="${SANDRA_CRASH_CLIENTS:-32}"
# Kills land up to this long after each restart: long enough that each incarnation is under load.
export SANDRA_CRASH_KILL_MAX_MS="${SANDRA_CRASH_KILL_MAX_MS:-4000}"
exec cargo test --test it --locked -- --exact crash::kill_dash_nine_at_scale_answers_nothing_twice --nocapture --include-ignored
