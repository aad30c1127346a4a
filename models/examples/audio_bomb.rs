//! Peak memory of decoding hostile and normal voice notes with the production cap.
//!
//! `cargo run --release -p sandra-models --example audio_bomb`
//!
//! Each case runs in a fresh child process (this binary re-executed with the case's name), so
//! its peak RSS (`VmHWM`) is its own: the child builds the input, resets VmHWM to the current
//! RSS, reads it (idle, input in memory), decodes, and reads VmHWM again. The cases: Ogg/Opus files of zero-length packets
//! (each concealed as 20 ms of audio; 300 KB declares 90 minutes) at 300 KB, 3 MB and 16 MB
//! (the media download limit), a 16 MB 8 kHz WAV (the symphonia path, upsampled, over the cap),
//! and a normal one-minute Opus voice note.

use std::process::Command;
use std::time::Instant;

use sandra_models::audio::decode_to_pcm16k;

#[path = "../tests/it/support/oggbuild.rs"]
mod oggbuild;

/// The production default (`transcription.max_audio_seconds`).
const MAX_SECONDS: f32 = 900.0;

const CASES: [&str; 5] = [
    "opus-bomb-300k",
    "opus-bomb-3m",
    "opus-bomb-16m",
    "wav-8khz-16m",
    "opus-voice-60s",
];

fn input(case: &str) -> (Vec<u8>, &'static str) {
    match case {
        "opus-bomb-300k" => (
            oggbuild::empty_packet_bomb(300 << 10),
            "audio/ogg; codecs=opus",
        ),
        "opus-bomb-3m" => (
            oggbuild::empty_packet_bomb(3 << 20),
            "audio/ogg; codecs=opus",
        ),
        "opus-bomb-16m" => (
            oggbuild::empty_packet_bomb(16 << 20),
            "audio/ogg; codecs=opus",
        ),
        "wav-8khz-16m" => {
            let frames: Vec<i16> = oggbuild::tone(8_000, 1_048.0)
                .iter()
                .map(|x| (x * 32767.0) as i16)
                .collect();
            (oggbuild::wav(8_000, 1, &frames), "audio/wav")
        }
        "opus-voice-60s" => {
            use rusty_opus::{Application, OpusEncoder};
            let mut enc = OpusEncoder::new(16_000, 1, Application::Voip).unwrap();
            let mut buf = vec![0u8; 1500];
            let packets: Vec<Vec<u8>> = oggbuild::tone(16_000, 60.0)
                .chunks_exact(320)
                .map(|f| {
                    let n = enc.encode(f, 320, &mut buf).unwrap();
                    buf[..n].to_vec()
                })
                .collect();
            (
                oggbuild::opus_stream(312, &packets),
                "audio/ogg; codecs=opus",
            )
        }
        other => panic!("unknown case {other}"),
    }
}

fn child(case: &str) {
    let (bytes, mime) = input(case);
    // Building the input has its own peak: reset the high-water mark to the current RSS
    // (Linux >= 4.0), so the peak below is the decode's.
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("{case}: cannot reset VmHWM ({e}); peak includes building the input");
    }
    let idle = sandra_models::testing::peak_rss_mb();
    let t = Instant::now();
    let pcm = decode_to_pcm16k(&bytes, mime, MAX_SECONDS).expect("decode");
    let ms = t.elapsed().as_millis();
    let peak = sandra_models::testing::peak_rss_mb();
    println!(
        "{case:<16} {:>9} B  {:>7.1} s  truncated={:<5}  idle {idle:>6.1} MB  peak {peak:>6.1} MB  +{:>6.1} MB  {ms} ms",
        bytes.len(),
        pcm.seconds,
        pcm.truncated,
        peak - idle,
    );
}

fn main() {
    if let Some(case) = std::env::args().nth(1) {
        return child(&case);
    }
    println!("cap {MAX_SECONDS} s; peak RSS (VmHWM) of a fresh process per case");
    let exe = std::env::current_exe().expect("current exe");
    for case in CASES {
        let status = Command::new(&exe).arg(case).status().expect("spawn case");
        assert!(status.success(), "{case} failed");
    }
}
