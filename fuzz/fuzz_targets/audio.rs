//! Voice-note decoding on untrusted bytes: `sandra_models::audio::decode_to_pcm16k` with a cap.
//!
//! Input: the first byte picks the announced MIME type (low three bits, modulo 6; the decoder
//! follows it, except that Ogg content is recognised by its magic bytes) and the cap (top two
//! bits: 10 s, which every seed but the amplifying one fits in, or 0.5, 2 or 60 s); the rest is
//! the file.
//!
//! Properties:
//! - no panic anywhere, including inside the third-party decoders (production catches those
//!   with `catch_unwind`, but libFuzzer's panic hook aborts first, so they are reported here);
//! - the output never exceeds the cap, whatever the input declares (an Ogg of empty Opus packets
//!   conceals up to 120 ms per lacing byte), and a truncated decode is exactly the cap long;
//! - a successful decode is non-empty, finite, and its `seconds` matches its sample count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandra_models::audio::{SAMPLE_RATE, decode_to_pcm16k};

/// What WhatsApp announces for each kind of audio it forwards.
const MIMES: [&str; 6] = [
    "audio/ogg; codecs=opus",
    "audio/mp4",
    "audio/aac",
    "audio/mpeg",
    "audio/wav",
    "audio/flac",
];

/// Caps in seconds. Small ones keep amplifying inputs cheap to execute; 60 s is a production-like
/// voice-note cap.
const CAPS: [f32; 4] = [10.0, 0.5, 2.0, 60.0];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let mime = MIMES[(pick & 7) as usize % MIMES.len()];
    let cap = CAPS[(pick >> 6) as usize];
    let cap_samples = (cap * SAMPLE_RATE as f32) as usize;
    if let Ok(pcm) = decode_to_pcm16k(bytes, mime, cap) {
        let n = pcm.samples.len();
        assert!(n > 0, "Ok with no samples");
        assert!(
            n <= cap_samples,
            "{n} samples exceed the cap of {cap_samples}"
        );
        if pcm.truncated {
            assert_eq!(n, cap_samples, "truncated output is not the cap long");
        }
        assert!(
            pcm.samples.iter().all(|s| s.is_finite()),
            "non-finite sample"
        );
        assert_eq!(pcm.seconds, n as f32 / SAMPLE_RATE as f32);
    }
});
