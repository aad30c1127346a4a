#!/usr/bin/env bash
# Benchmarks the working tree against an earlier commit in the same run, interleaved, so that
# both see the same machine: webhook ingestion (benches/webhook.rs) and, given a GGUF, the local
# chat model (models/benches/bench_llm.rs). Prints each run and the median ratio head/base.
#
#   scripts/bench-compare.sh BASE_REF [MODEL.gguf] [ROUNDS]
#
# Both trees are built in release mode into the same target dir (dependencies are shared, only
# Sandra's crates build twice). ROUNDS (default 3) pairs of runs per benchmark. The base checkout
# stays in target/bench-compare/<commit> for the next comparison (`git worktree prune` after
# deleting it).
set -euo pipefail
cd "$(dirname "$0")/.."
base_ref=${1:?usage: scripts/bench-compare.sh BASE_REF [MODEL.gguf] [ROUNDS]}
model=${2:-}
rounds=${3:-3}
root=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The base tree is kept (one per commit) so that a second comparison does not rebuild it: cargo
# fingerprints path crates by their location and file times.
base_sha=$(git rev-parse --short "$base_ref")
base_dir="$CARGO_TARGET_DIR/bench-compare/$base_sha"
if [ ! -d "$base_dir" ]; then
  git worktree add --detach "$base_dir" "$base_sha" >/dev/null
fi
export CARGO_TERM_COLOR=never

# Builds one tree's benchmark executables and copies them to $work/<side>-<bench>.
build() {
  local side=$1 dir=$2
  (cd "$dir" && cargo bench --locked --no-run --bench webhook --message-format=json 2>/dev/null) |
    jq -r 'select(.executable != null and .target.name == "webhook") | .executable' |
    xargs -I{} cp {} "$work/$side-webhook"
  if [ -n "$model" ]; then
    (cd "$dir" && cargo bench --locked --no-run -p sandra-models --bench bench_llm --message-format=json 2>/dev/null) |
      jq -r 'select(.executable != null and .target.name == "bench_llm") | .executable' |
      xargs -I{} cp {} "$work/$side-llm"
  fi
}
echo "building base ($base_sha, in $base_dir) and head (working tree)..." >&2
build base "$base_dir"
build head "$root"

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for r in $(seq "$rounds"); do
  for side in base head; do
    "$work/$side-webhook" --bench | tee "$work/$side-webhook-$r.txt" |
      grep '^sandra' | sed "s/^/$side round $r: /"
  done
done
echo "webhook ingestion, sandra (durable ack), median of $rounds:"
for side in base head; do
  rps=$(cat "$work"/$side-webhook-*.txt | awk '/^sandra/ {print $4}' | median)
  ratio=$(cat "$work"/$side-webhook-*.txt | awk '/^ratio/ {sub("x,","",$4); print $4}' | median)
  echo "  $side: $rps req/s; vs the 200-only handler in the same run: ${ratio}x"
  eval "${side}_rps=$rps"
done
echo "  head/base throughput: $(awk -v h="$head_rps" -v b="$base_rps" 'BEGIN {printf "%.3f", h/b}')"

if [ -n "$model" ]; then
  for r in $(seq "$rounds"); do
    for side in base head; do
      "$work/$side-llm" --bench "$model" 2>/dev/null | tee "$work/$side-llm-$r.txt" |
        sed "s/^/$side round $r: /"
    done
  done
  echo "local chat model $(basename "$model"), median of $rounds:"
  for key in prefill_tok_s gen_tok_s next_turn_first_token_s; do
    b=$(grep -ho "$key=[0-9.]*" "$work"/base-llm-*.txt | cut -d= -f2 | median)
    h=$(grep -ho "$key=[0-9.]*" "$work"/head-llm-*.txt | cut -d= -f2 | median)
    echo "  $key: base $b, head $h, head/base $(awk -v h="$h" -v b="$b" 'BEGIN {printf "%.3f", h/b}')"
  done
fi
