#!/usr/bin/env bash
# Builds Sandra and runs it with the embedded defaults (sled storage under ./data, config.toml).
# WhatsApp credentials come from the environment (see README.md); without them Sandra still
# starts, serves /healthz, and refuses webhooks until they are set.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin sandra
exec ./target/release/sandra serve --config config.toml "$@"
