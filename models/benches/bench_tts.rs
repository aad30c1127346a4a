//! Text-to-speech speed: seconds of compute per second of speech for a Piper voice run by
//! Sandra's engine (rten), on fixed sentences. `scripts/bench-tts.sh` runs it beside
//! onnxruntime on the same ONNX and the same phoneme ids, in the same run.
//!
//! `cargo bench -p sandra-models --bench bench_tts -- VOICE.onnx THREADS RUNS OUT_DIR`
//!
//! Writes `OUT_DIR/ids.json` (the phoneme ids of each sentence and the voice's scales, for the
//! onnxruntime side) and `OUT_DIR/still.f32` (the first sentence spoken with the noise scales
//! at 0, little-endian f32, to compare outputs), and prints one JSON line of timings. Phonemes
//! are made once, outside the timing: both engines get the same ids. Under `cargo test` (no
//! `--bench` argument) it does nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sandra_models::speech::{InferenceConfig, PiperVoice, espeak};

/// A short, a middle and a long sentence: about 15 s of speech together.
const SENTENCES: [&str; 3] = [
    "Hi, I am running ten minutes late for the meeting.",
    "The plumber came yesterday and fixed the leak under the sink, but the old pipes should be replaced soon.",
    "Please check whether we still have enough white paint in the garage, and call me back when you have a moment, because the painter wants to start on Monday if the weather stays dry.",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("bench_tts: run with `scripts/bench-tts.sh`");
        return;
    }
    let rest: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [voice, threads, runs, out] = rest[..] else {
        eprintln!("usage: bench_tts VOICE.onnx THREADS RUNS OUT_DIR");
        std::process::exit(2);
    };
    let threads: usize = threads.parse().expect("threads");
    let runs: usize = runs.parse().expect("runs");
    let out = PathBuf::from(out);

    let t = Instant::now();
    let voice = PiperVoice::load(std::path::Path::new(voice)).expect("voice loads");
    let load_s = t.elapsed().as_secs_f64();
    let pool = Arc::new(rten::ThreadPool::with_num_threads(threads));
    let cfg = voice.config().clone();
    let ids: Vec<Vec<i64>> = SENTENCES
        .iter()
        .map(|s| {
            let ipa = espeak::phonemize(s, &cfg.espeak.voice).expect("phonemes");
            cfg.phoneme_ids(&ipa).0
        })
        .collect();
    let scales = cfg.inference;
    std::fs::write(
        out.join("ids.json"),
        serde_json::json!({
            "ids": ids,
            "scales": [scales.noise_scale, scales.length_scale, scales.noise_w],
            "sample_rate": voice.sample_rate(),
        })
        .to_string(),
    )
    .expect("write ids");

    let still = InferenceConfig {
        noise_scale: 0.0,
        length_scale: scales.length_scale,
        noise_w: 0.0,
    };
    let still_pcm = voice
        .synthesize(&ids[0], still, Some(&pool))
        .expect("synth");
    let bytes: Vec<u8> = still_pcm.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out.join("still.f32"), bytes).expect("write still");

    // Warm-up (first-run allocations, weight packing), then timed runs over every sentence.
    for i in &ids {
        voice.synthesize(i, scales, Some(&pool)).expect("synth");
    }
    // The noise scales also vary the durations, so each run's audio length differs a little:
    // the figure is compute per second of the audio that run produced (median over runs).
    let mut per_run: Vec<(f64, f64)> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let mut samples = 0usize;
        for i in &ids {
            samples += voice
                .synthesize(i, scales, Some(&pool))
                .expect("synth")
                .len();
        }
        per_run.push((
            t.elapsed().as_secs_f64(),
            samples as f64 / voice.sample_rate() as f64,
        ));
    }
    per_run.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
    let (compute_s, audio_s) = per_run[per_run.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "engine": "sandra-rten",
            "threads": threads,
            "load_s": load_s,
            "compute_s": compute_s,
            "audio_s": audio_s,
            "rtf": compute_s / audio_s,
            "runs": per_run.len(),
        })
    );
}
