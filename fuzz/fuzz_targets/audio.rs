//! Voice-note decoding on untrusted bytes: `sandra_models::audio::decode_to_pcm16k`.
//!
//! Input: the first byte picks the announced MIME type (the decoder follows it, except that Ogg
//! content is recognised by its magic bytes), the rest is the file.
//!
//! Properties:
//! - no panic anywhere, including inside the third-party decoders (production catches those
//!   with `catch_unwind`, but libFuzzer's panic hook aborts first, so they are reported here);
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

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let mime = MIMES[pick as usize % MIMES.len()];
    if let Ok(pcm) = decode_to_pcm16k(bytes, mime) {
        assert!(!pcm.samples.is_empty(), "Ok with no samples");
        assert!(
            pcm.samples.iter().all(|s| s.is_finite()),
            "non-finite sample"
        );
        let secs = pcm.samples.len() as f32 / SAMPLE_RATE as f32;
        assert_eq!(pcm.seconds, secs);
    }
});
