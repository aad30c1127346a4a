#!/usr/bin/env bash
# Text-to-speech speed: seconds of compute per second of speech (RTF) for the Piper joe voice,
# Sandra's engine (rten) beside onnxruntime on the same ONNX file with the same phoneme ids, in
# the same run, on the same number of threads. Goal: Sandra at most 1.0x onnxruntime's RTF.
#
#   scripts/fetch-models.sh voice        # once: .models/piper/en_US-joe-medium.onnx
#   pip install onnxruntime numpy        # once
#   scripts/bench-tts.sh [threads] [runs]   # default: 2 threads, 5 timed runs
#
# Three sentences (about 15 s of speech) are phonemised once by Sandra (libespeak-ng); both
# engines then run the graph on those ids with the voice's own scales (noise on, as in use),
# after one warm-up pass; model load and phonemisation are excluded; median of the runs. A
# correctness check rides along: the first sentence with the noise scales at 0 from both
# engines, max absolute difference of the samples.
#
# Build profile: BENCH_PROFILE (default `bench`, i.e. release). Set CARGO_TARGET_DIR as usual.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
threads="${1:-2}"
runs="${2:-5}"
voice="${TTS_VOICE:-$repo/.models/piper/en_US-joe-medium.onnx}"
profile="${BENCH_PROFILE:-bench}"
[[ -f "$voice" ]] || { echo "no voice at $voice: run scripts/fetch-models.sh voice" >&2; exit 1; }
python3 -c "import onnxruntime, numpy" 2>/dev/null ||
  { echo "needs onnxruntime and numpy: pip install onnxruntime numpy" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$repo"
if [[ "$profile" == bench ]]; then
  cargo bench --quiet -p sandra-models --bench bench_tts -- "$voice" "$threads" "$runs" "$work" > "$work/sandra.json"
else
  cargo bench --quiet --profile "$profile" -p sandra-models --bench bench_tts -- "$voice" "$threads" "$runs" "$work" > "$work/sandra.json"
fi
grep '^{' "$work/sandra.json" > "$work/sandra.line"

python3 - "$voice" "$threads" "$runs" "$work" <<'PY'
import json, sys, time, platform, os
import numpy as np, onnxruntime as ort
voice, threads, runs, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
spec = json.load(open(f"{work}/ids.json"))
rate = spec["sample_rate"]
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
t = time.perf_counter()
sess = ort.InferenceSession(voice, so, providers=["CPUExecutionProvider"])
load_s = time.perf_counter() - t
def synth(ids, scales):
    x = np.array([ids], dtype=np.int64)
    feeds = {"input": x, "input_lengths": np.array([x.shape[1]], dtype=np.int64),
             "scales": np.array(scales, dtype=np.float32)}
    return sess.run(None, feeds)[0].reshape(-1)
scales = spec["scales"]
still = synth(spec["ids"][0], [0.0, scales[1], 0.0])
ours = np.fromfile(f"{work}/still.f32", dtype="<f4")
n = min(len(ours), len(still))
diff = float(np.max(np.abs(ours[:n] - still[:n]))) if n else float("nan")
for ids in spec["ids"]:
    synth(ids, scales)
per_run = []
for _ in range(runs):
    t = time.perf_counter(); samples = 0
    for ids in spec["ids"]:
        samples += len(synth(ids, scales))
    per_run.append((time.perf_counter() - t, samples / rate))
per_run.sort(key=lambda r: r[0] / r[1])
c, a = per_run[len(per_run) // 2]
ortr = {"engine": f"onnxruntime-{ort.__version__}", "threads": threads, "load_s": load_s,
        "compute_s": c, "audio_s": a, "rtf": c / a, "runs": runs}
san = json.loads(open(f"{work}/sandra.line").read())
print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
      f"load average {os.getloadavg()[0]:.2f}; {threads} threads, median of {runs} runs")
print(f"{'engine':<22} {'load s':>7} {'compute s':>10} {'audio s':>8} {'RTF':>7}")
for r in (san, ortr):
    print(f"{r['engine']:<22} {r['load_s']:>7.2f} {r['compute_s']:>10.3f} {r['audio_s']:>8.2f} {r['rtf']:>7.4f}")
print(f"ratio sandra/onnxruntime (RTF): {san['rtf'] / ortr['rtf']:.2f}x (goal <= 1.0x)")
print(f"noise off, sentence 1: {len(ours)} vs {len(still)} samples, max |difference| {diff:.2e}")
PY
