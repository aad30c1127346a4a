#!/usr/bin/env bash
# Whisper speed/accuracy benchmark: Sandra (candle, KV-cached decoder) beside faster-whisper
# (CTranslate2, int8 and f32) on the same clips, same machine, same thread count.
#
#   scripts/fetch-whisper.sh            # once: .models/whisper-base (+ .models/whisper-base.ct2)
#   pip install faster-whisper          # once
#   scripts/bench-whisper.sh [threads]  # default: 2
#
# Clips: English text spoken by espeak-ng (~10 s and ~30 s), encoded with opusenc like a voice
# note. Reports real-time factor (processing s / audio s, Ogg decode included, model load
# excluded, after one warm-up run; median of BENCH_RUNS runs, default 3), peak RSS per process,
# and WER against the source text.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
threads="${1:-2}"
model="${WHISPER_DIR:-$repo/.models/whisper-base}"
ct2="${WHISPER_CT2_DIR:-$model.ct2}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat > "$work/short.txt" <<'T'
Hi Sandra, I am running ten minutes late for the meeting. Could you tell the others to start without me and send me the notes afterwards?
T
cat > "$work/long.txt" <<'T'
Good morning. I wanted to give you a quick update on the kitchen renovation. The plumber came yesterday and fixed the leak under the sink, but he said the old pipes behind the wall should be replaced soon. The new cabinets arrive on Thursday, and the painter can start next Monday if the weather stays dry. Please check whether we still have enough white paint in the garage, and call me back when you have a moment.
T
clips=()
for name in short long; do
  espeak-ng -s 160 -w "$work/$name.wav" -f "$work/$name.txt"
  opusenc --quiet "$work/$name.wav" "$work/$name.opus"
  clips+=("$work/$name.opus")
done

cargo build --quiet --release -p sandra-models --example whisper --manifest-path "$repo/Cargo.toml"
bin="$repo/target/release/examples/whisper"
results="$work/results.jsonl"
# sandra: Sandra's defaults (f32 encoder, q8_0 decoder matrices quantized on load).
# sandra-f32: every weight f32 (WHISPER_DECODER_Q8=0).
# sandra-trim1s: encoder context trimmed to the audio + 1 s (WhisperOptions::encoder_trim_margin_ms).
# sandra-gguf (BENCH_GGUF=1, needs `... --example whisper -- quantize <dir>`): q8_0 decoder.
run_sandra() { # engine weights trim_ms decoder_q8
  WHISPER_TRIM_MS="$3" WHISPER_DECODER_Q8="$4" "$bin" bench "$model" "$2" "$threads" "${clips[@]}" \
    | sed "s/^{/{\"engine\":\"$1\",/" >> "$results"
}
run_sandra sandra safetensors "" 1
run_sandra sandra-f32 safetensors "" 0
run_sandra sandra-trim1s safetensors 1000 1
if [[ "${BENCH_GGUF:-0}" == 1 && -f "$model/model.gguf" ]]; then
  run_sandra sandra-gguf-q8 gguf "" 1
fi
for ct in int8 float32; do
  python3 "$repo/scripts/bench-whisper-fw.py" "$ct2" "$ct" "$threads" "${clips[@]}" >> "$results"
done
python3 - "$results" "$work" <<'PY'
import json, sys, re, pathlib, platform, os
res, work = sys.argv[1], pathlib.Path(sys.argv[2])
def words(s): return re.findall(r"[a-z0-9']+", s.lower())
def wer(r, h):
    r, h = words(r), words(h)
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r):
        cur = [i + 1] * (len(h) + 1)
        for j, hw in enumerate(h):
            cur[j + 1] = min(prev[j] + (rw != hw), prev[j + 1] + 1, cur[j] + 1)
        prev = cur
    return prev[-1] / max(1, len(r))
rows, summary = [], {}
for line in open(res):
    d = json.loads(line)
    if "clip" in d:
        name = pathlib.Path(d["clip"]).stem
        ref = (work / f"{name}.txt").read_text()
        rows.append((d["engine"], name, d["audio_s"], d["decode_s"] + d["asr_s"], d["rtf"], wer(ref, d["text"]), d["text"]))
    else:
        summary[d["engine"]] = d
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {cpu}, {os.cpu_count()} cpus, load average at the end {os.getloadavg()}")
print(f"{'engine':<24}{'clip':<7}{'audio s':>8}{'proc s':>8}{'RTF':>7}{'WER':>6}{'load s':>8}{'peak RSS MB':>12}")
for e, n, a, p, r, w, t in rows:
    s = summary.get(e, {})
    print(f"{e:<24}{n:<7}{a:>8.1f}{p:>8.2f}{r:>7.3f}{w:>6.2f}{s.get('load_s', 0):>8.2f}{s.get('peak_rss_mb', 0):>12.0f}")
print()
for e, n, a, p, r, w, t in rows:
    print(f"{e} {n}: {t}")
PY
