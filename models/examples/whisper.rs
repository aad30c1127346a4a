//! Whisper tools: install CTranslate2 weights, transcribe a file, benchmark.
//!
//! ```text
//! cargo run --release -p sandra-models --example whisper -- install <ct2-dir> <dst-dir>
//! cargo run --release -p sandra-models --example whisper -- quantize <model-dir>   # adds model.gguf
//! cargo run --release -p sandra-models --example whisper -- transcribe <model-dir> <audio> [mime]
//! cargo run --release -p sandra-models --example whisper -- bench <model-dir> <weights: gguf|safetensors> <threads> <clip.opus>...
//! ```
//! `bench` prints one JSON line per clip (seconds of audio, seconds of processing, text) and a
//! final line with load time and peak RSS (`VmHWM`); `scripts/bench-whisper.sh` drives it.

use std::path::Path;
use std::time::Instant;

use sandra_models::audio::decode_to_pcm16k;
use sandra_models::whisper::{self, WhisperModel, WhisperOptions};

/// Clips longer than this are cut (the production default, `transcription.max_audio_seconds`).
const MAX_SECONDS: f32 = 900.0;

fn mime_for(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("opus") | Some("ogg") => "audio/ogg; codecs=opus",
        Some("mp3") => "audio/mpeg",
        Some("m4a") | Some("mp4") => "audio/mp4",
        Some("wav") => "audio/wav",
        _ => "application/octet-stream",
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("install") if args.len() == 3 => {
            let cfg = sandra_models::install::install_from_ct2_dir(
                Path::new(&args[1]),
                Path::new(&args[2]),
            )?;
            println!(
                "installed {} ({} layers, d_model {})",
                args[2], cfg.encoder_layers, cfg.d_model
            );
        }
        Some("quantize") if args.len() == 2 => {
            let dir = Path::new(&args[1]);
            whisper::gguf::quantize_dir(dir, &dir.join("model.gguf"), Default::default())?;
            println!("wrote {}", dir.join("model.gguf").display());
        }
        Some("transcribe") if args.len() >= 3 => {
            let bytes = std::fs::read(&args[2])?;
            let mime = args
                .get(3)
                .map(String::as_str)
                .unwrap_or(mime_for(&args[2]));
            let pcm = decode_to_pcm16k(&bytes, mime, MAX_SECONDS)?;
            let mut m = WhisperModel::load(Path::new(&args[1]), &WhisperOptions::default())?;
            let t = m.transcribe(&pcm.samples)?;
            println!("[{}] {}", t.language.unwrap_or_default(), t.text);
        }
        Some("profile") if args.len() >= 4 => {
            // Where the time goes for one clip: mel, encoder, cross K/V, decoder steps.
            let opts = WhisperOptions {
                prefer_gguf: args[2] == "gguf",
                ..Default::default()
            };
            let m = WhisperModel::load(Path::new(&args[1]), &opts)?;
            let pcm = decode_to_pcm16k(&std::fs::read(&args[3])?, mime_for(&args[3]), MAX_SECONDS)?;
            for _ in 0..2 {
                let t = Instant::now();
                let mel = m.mel_tensor(&pcm.samples)?;
                let t_mel = t.elapsed();
                let t = Instant::now();
                let audio = m.whisper().encoder.forward(&mel)?;
                let t_enc = t.elapsed();
                let t = Instant::now();
                let mut st = m.whisper().decoder.start(&audio)?;
                let t_cross = t.elapsed();
                let t = Instant::now();
                let _ = m
                    .whisper()
                    .decoder
                    .step(&mut st, &[50258, 50259, 50359, 50363])?;
                let t_prompt = t.elapsed();
                let t = Instant::now();
                for i in 0..20 {
                    let _ = m.whisper().decoder.step(&mut st, &[220 + i])?;
                }
                let t_steps = t.elapsed() / 20;
                println!(
                    "mel {t_mel:?} encoder {t_enc:?} cross-kv {t_cross:?} prompt {t_prompt:?} per-token {t_steps:?}"
                );
            }
        }
        Some("bench") if args.len() >= 5 => {
            let opts = WhisperOptions {
                prefer_gguf: args[2] == "gguf",
                threads: Some(args[3].parse()?),
                decoder_q8: std::env::var("WHISPER_DECODER_Q8").as_deref() != Ok("0"),
                encoder_trim_margin_ms: std::env::var("WHISPER_TRIM_MS")
                    .ok()
                    .and_then(|v| v.parse().ok()),
                ..Default::default()
            };
            let threads = opts.threads.unwrap_or(1);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            let started = Instant::now();
            let mut m = pool.install(|| WhisperModel::load(Path::new(&args[1]), &opts))?;
            let load_s = started.elapsed().as_secs_f64();
            // One warm-up pass on the first clip (page faults, allocator), not timed.
            let first =
                decode_to_pcm16k(&std::fs::read(&args[4])?, mime_for(&args[4]), MAX_SECONDS)?;
            pool.install(|| m.transcribe(&first.samples))?;
            let runs: usize = std::env::var("BENCH_RUNS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3);
            for clip in &args[4..] {
                let bytes = std::fs::read(clip)?;
                // The run with the median processing time of `runs`.
                let mut timed = Vec::new();
                for _ in 0..runs.max(1) {
                    let t0 = Instant::now();
                    let pcm = decode_to_pcm16k(&bytes, mime_for(clip), MAX_SECONDS)?;
                    let decode_s = t0.elapsed().as_secs_f64();
                    let t1 = Instant::now();
                    let out = pool.install(|| m.transcribe(&pcm.samples))?;
                    timed.push((decode_s, t1.elapsed().as_secs_f64(), pcm.seconds, out));
                }
                timed.sort_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)));
                let (decode_s, asr_s, seconds, out) = timed.swap_remove(timed.len() / 2);
                println!(
                    "{}",
                    serde_json::json!({"clip": clip, "audio_s": seconds, "decode_s": decode_s,
                        "asr_s": asr_s, "rtf": (decode_s + asr_s) / seconds as f64,
                        "language": out.language, "text": out.text})
                );
            }
            println!(
                "{}",
                serde_json::json!({"load_s": load_s, "peak_rss_mb": sandra_models::testing::peak_rss_mb(), "threads": threads})
            );
        }
        _ => {
            eprintln!(
                "usage: whisper install <ct2-dir> <dst> | transcribe <model-dir> <audio> [mime] | bench <model-dir> <gguf|safetensors> <threads> <clips>..."
            );
            std::process::exit(2);
        }
    }
    Ok(())
}
