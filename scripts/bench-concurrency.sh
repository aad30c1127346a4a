#!/usr/bin/env bash
# Many people writing at once, end to end (benches/concurrency.rs): 1, 8 and 32 simultaneous
# conversations of realistic WhatsApp questions, a returning user's next turn, and webhook ack
# latency at a fixed rate with the models idle and busy. Run twice in the same script, with the
# same prompts built by the same code:
#   1. Sandra's local candle engine on MODEL;
#   2. Sandra in front of llama.cpp's llama-server (`--parallel 8`, continuous batching) on the
#      same MODEL, through `[llm] backend = "openai"`.
# llama-server is built once with cmake from the llama.cpp tree that the llama-cpp-python sdist
# vendors (PyPI; sha256 checked), cached under ~/.cache/sandra-bench. Both use 2 threads.
#
#   scripts/bench-concurrency.sh [MODEL.gguf] [-- extra bench args, e.g. --conversations 1,8]
#
# env: PROFILE=release|dev (default release), SKIP_LLAMA=1 (only Sandra), SKIP_SANDRA=1 (only
#      llama-server), LLAMA_PARALLEL (8), THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-}
[[ -z $model || $model == -- ]] && model=$(ls .models/*qwen2.5-coder-1.5b*.gguf /work/models/*qwen2.5-coder-1.5b*.gguf 2>/dev/null | head -1 || true)
[[ -f $model ]] || { echo "usage: $0 MODEL.gguf (e.g. from scripts/fetch-models.sh qwen)" >&2; exit 1; }
model=$(realpath "$model")
shift || true
[[ ${1:-} == -- ]] && shift
extra=("$@")
PROFILE=${PROFILE:-release}
THREADS=${THREADS:-2}
PARALLEL=${LLAMA_PARALLEL:-8}

bench() {
  if [[ $PROFILE == dev ]]; then
    cargo test -q --locked --bench concurrency -- --bench "$@"
  else
    cargo bench -q --locked --bench concurrency -- "$@"
  fi
}

if [[ ${SKIP_SANDRA:-0} != 1 ]]; then
  echo "== Sandra, local candle engine ($model)"
  bench --model "$model" "${extra[@]}"
fi

[[ ${SKIP_LLAMA:-0} == 1 ]] && exit 0

LCP=0.3.36
LCP_SHA=$(curl -fsS -H 'Accept: application/vnd.pypi.simple.v1+json' https://pypi.org/simple/llama-cpp-python/ |
  python3 -c "import json,sys; print([f['hashes']['sha256'] for f in json.load(sys.stdin)['files'] if f['filename']=='llama_cpp_python-$LCP.tar.gz'][0])")
cache=${XDG_CACHE_HOME:-$HOME/.cache}/sandra-bench
src=$cache/llama_cpp_python-$LCP/vendor/llama.cpp
server=$src/build/bin/llama-server
# A binary built with GGML_NATIVE on another CPU (a cache carried to a new machine) starts, then
# dies with SIGILL in its first matmul: rebuild when the CPU's flags differ from the build's.
cpu=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-16)
if [[ -x $server && $(cat "$src/build/.cpu" 2>/dev/null) != "$cpu" ]]; then
  echo "llama-server in $src/build was built for another CPU: rebuilding" >&2
  rm -rf "$src/build"
fi
if [[ ! -x $server ]]; then
  command -v cmake >/dev/null || apt-get install -y -q cmake
  mkdir -p "$cache"
  tarball=$cache/llama_cpp_python-$LCP.tar.gz
  if [[ ! -f $tarball ]]; then
    # The simple index's JSON gives the sdist's URL; `pip download` would build its metadata
    # (and cmake from source) first.
    url=$(curl -fsS -H 'Accept: application/vnd.pypi.simple.v1+json' https://pypi.org/simple/llama-cpp-python/ |
      python3 -c "import json,sys; print([f['url'] for f in json.load(sys.stdin)['files'] if f['filename']=='llama_cpp_python-$LCP.tar.gz'][0])")
    curl -fsSL -o "$tarball" "$url"
  fi
  echo "$LCP_SHA  $tarball" | sha256sum -c --quiet
  tar xzf "$tarball" -C "$cache"
  # -march=native on a CPU that lists AMX turns on ggml's AMX kernels, which die with SIGILL
  # in VMs that do not hand out the AMX tile state (seen on this project's 2-core VM): there,
  # the AVX-512 (VNNI, VBMI, BF16) kernels are named instead.
  isa=(-DGGML_NATIVE=ON)
  if grep -qw amx_int8 /proc/cpuinfo && grep -qw avx512_vnni /proc/cpuinfo; then
    isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
      -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON
      -DGGML_AVX_VNNI=ON)
  fi
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release "${isa[@]}" -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
  cmake --build "$src/build" --target llama-server -j"$(nproc)"
  echo "$cpu" >"$src/build/.cpu"
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Each of the PARALLEL slots gets 4096 tokens of context, as Sandra's llm.context_tokens.
"$server" -m "$model" --host 127.0.0.1 --port "$port" -t "$THREADS" -tb "$THREADS" \
  --parallel "$PARALLEL" --cont-batching -c $((4096 * PARALLEL)) --no-webui >/tmp/bench-llama-server.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
healthy=0
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && { healthy=1; break; }
  kill -0 $pid 2>/dev/null || break
  sleep 1
done
if [[ $healthy != 1 ]]; then
  echo "llama-server did not come up; its log:" >&2
  tail -20 /tmp/bench-llama-server.log >&2
  exit 1
fi
echo
echo "== Sandra in front of llama-server --parallel $PARALLEL (llama.cpp from llama-cpp-python $LCP)"
bench --model "$model" --openai "http://127.0.0.1:$port" "${extra[@]}"
