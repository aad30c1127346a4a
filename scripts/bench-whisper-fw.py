"""faster-whisper side of scripts/bench-whisper.sh: same JSON lines as the Rust bench.

usage: bench-whisper-fw.py <ct2-dir> <int8|float32> <threads> <clips>...
Each clip runs BENCH_RUNS times (default 3); the median run is reported.
Greedy (beam_size=1), temperature 0 only, no timestamps, no VAD, language auto-detected:
the same work Sandra's decoder does.
"""
import json
import os
import resource
import sys
import time

from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio

ct2, compute_type, threads, clips = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
engine = f"faster-whisper-{compute_type}"
t0 = time.perf_counter()
model = WhisperModel(ct2, device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=1)
load_s = time.perf_counter() - t0


def run(clip):
    t0 = time.perf_counter()
    audio = decode_audio(clip, sampling_rate=16000)
    decode_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    segments, info = model.transcribe(
        audio, beam_size=1, best_of=1, temperature=0.0, without_timestamps=True,
        condition_on_previous_text=False, vad_filter=False,
    )
    text = " ".join(s.text.strip() for s in segments)
    asr_s = time.perf_counter() - t1
    return audio, decode_s, asr_s, info, text


runs = int(os.environ.get("BENCH_RUNS", "3"))
run(clips[0])  # warm-up, not timed
for clip in clips:
    # The run with the median processing time of `runs`.
    timed = sorted((run(clip) for _ in range(runs)), key=lambda r: r[1] + r[2])
    audio, decode_s, asr_s, info, text = timed[len(timed) // 2]
    secs = len(audio) / 16000
    print(json.dumps({"engine": engine, "clip": clip, "audio_s": secs, "decode_s": decode_s,
                      "asr_s": asr_s, "rtf": (decode_s + asr_s) / secs,
                      "language": info.language, "text": text}))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"engine": engine, "load_s": load_s, "peak_rss_mb": peak, "threads": threads}))
