//! Voice-note decoding: compressed audio bytes in memory → 16 kHz mono `f32` PCM for Whisper.
//!
//! Everything happens in memory, in pure Rust; media bytes never touch the disk. The work is
//! synchronous and CPU-bound (tens of milliseconds for a minute of audio): callers on an async
//! runtime run [`decode_to_pcm16k`] inside `spawn_blocking`.
//!
//! - Ogg/Opus (WhatsApp voice notes, `audio/ogg; codecs=opus`): [`opus`], `ogg` + `rusty-opus`,
//!   decoded straight at 16 kHz (Opus decodes natively at 16 kHz, no resampler), honouring the
//!   OpusHead pre-skip and output gain and the end trimming given by the final granule position.
//! - AAC/M4A (`audio/mp4`, `audio/aac`), MP3 (`audio/mpeg`), WAV, FLAC and Ogg/Vorbis: [`other`],
//!   symphonia, then downmix and [`resample`] to 16 kHz.
//! - Anything else (AMR, for one) is a typed [`AudioError::Unsupported`].

pub mod opus;
pub mod other;
pub mod resample;

/// Whisper's sample rate.
pub const SAMPLE_RATE: u32 = 16_000;

/// Decoded audio: mono, 16 kHz, `f32` in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Pcm {
    pub samples: Vec<f32>,
    /// Duration in seconds (`samples.len() / 16000`).
    pub seconds: f32,
}

impl Pcm {
    pub fn new(samples: Vec<f32>) -> Self {
        let seconds = samples.len() as f32 / SAMPLE_RATE as f32;
        Self { samples, seconds }
    }
}

/// Why audio could not be decoded. Never a panic: malformed media is an ordinary failure.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AudioError {
    /// No pure-Rust decoder for this format (e.g. `audio/amr`).
    #[error("unsupported audio format: {mime}")]
    Unsupported { mime: String },
    /// The bytes do not form a valid stream of the announced format.
    #[error("malformed {format} audio: {reason}")]
    Malformed {
        format: &'static str,
        reason: String,
    },
    /// The stream decoded to no samples at all.
    #[error("audio contains no samples")]
    Empty,
}

impl AudioError {
    pub(crate) fn malformed(format: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Malformed {
            format,
            reason: reason.to_string(),
        }
    }
}

/// Decodes `bytes` (announced as `mime`, e.g. `audio/ogg; codecs=opus`) to 16 kHz mono `f32`.
///
/// The MIME type chooses the decoder; Ogg content is recognised by its magic bytes whatever the
/// label says (`OpusHead` → Opus, otherwise symphonia's Ogg/Vorbis).
pub fn decode_to_pcm16k(bytes: &[u8], mime: &str) -> Result<Pcm, AudioError> {
    // The decoders are third-party code fed untrusted bytes: a panic in one of them is a
    // malformed file, not a crash.
    std::panic::catch_unwind(|| decode_inner(bytes, mime)).unwrap_or_else(|_| {
        Err(AudioError::malformed(
            "audio",
            "decoder panicked on malformed input",
        ))
    })
}

fn decode_inner(bytes: &[u8], mime: &str) -> Result<Pcm, AudioError> {
    let essence = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let pcm = if bytes.starts_with(b"OggS") {
        if opus::is_ogg_opus(bytes) {
            opus::decode_ogg_opus(bytes)?
        } else {
            other::decode_with_symphonia(bytes, Some("ogg"))?
        }
    } else {
        match essence.as_str() {
            "audio/ogg" | "audio/opus" | "application/ogg" => {
                return Err(AudioError::malformed("ogg", "missing OggS capture pattern"));
            }
            "audio/mp4" | "audio/m4a" | "audio/x-m4a" | "audio/aac" | "audio/x-aac" => {
                other::decode_with_symphonia(bytes, Some("m4a"))?
            }
            "audio/mpeg" | "audio/mp3" | "audio/x-mp3" => {
                other::decode_with_symphonia(bytes, Some("mp3"))?
            }
            "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => {
                other::decode_with_symphonia(bytes, Some("wav"))?
            }
            "audio/flac" | "audio/x-flac" => other::decode_with_symphonia(bytes, Some("flac"))?,
            _ => return Err(AudioError::Unsupported { mime: essence }),
        }
    };
    if pcm.samples.is_empty() {
        return Err(AudioError::Empty);
    }
    Ok(pcm)
}
