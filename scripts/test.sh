#!/usr/bin/env bash
# Runs Sandra's whole test suite: what README.md calls "run the tests", and what CI runs.
# First the checks that need no test run, so a red CI says why at once: formatting (`cargo fmt`)
# and clippy with every warning an error (the workspace lints in Cargo.toml, clippy.toml). Then
# it installs the Debian packages the build links (libespeak-ng-dev, libopus-dev) and the tools
# the audio tests use to make voice notes (espeak-ng, opus-tools, sox) when they are missing,
# and runs every test of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

fail() {
    echo >&2
    echo "scripts/test.sh: FAILED: $*" >&2
    exit 1
}

# Both checks need rustup's rustfmt and clippy components (the default profile has them).
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt || true
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy || true

echo "== cargo fmt --all --check"
cargo fmt --all --check ||
    fail "the code is not formatted: run \`cargo fmt --all\` and commit the result (needs the rustfmt component: \`rustup component add rustfmt\`)."

echo "== cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings ||
    fail "clippy found problems (each warning counts as an error): fix what it printed above (needs the clippy component: \`rustup component add clippy\`)."

echo "== tests"
bash scripts/install-test-deps.sh || echo "warning: could not install the audio test tools; tests that need them print skipped"
cargo test --workspace --all-targets --locked
