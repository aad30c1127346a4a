#!/usr/bin/env bash
# Builds Sandra, installs the default models if they are missing (a 1.5B chat model,
# multilingual Whisper base, the PP-OCR text reader and the English voice; about 1.4 GB,
# downloaded once, sha256-verified), and runs Sandra
# with the embedded defaults: sled storage under ./data, settings from config.toml.
# WhatsApp credentials come from the environment (see README.md); without them Sandra still
# starts, serves /healthz, and refuses webhooks until they are set.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin sandra
./target/release/sandra models fetch --config config.toml --if-missing
exec ./target/release/sandra serve --config config.toml "$@"
