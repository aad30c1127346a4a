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
//!
//! Bounded by what it produces: a few megabytes of input can declare hours of audio (an Ogg of
//! empty Opus packets conceals 20 ms per 1-byte lacing value: 16 MB is ~36 GB of PCM), so every
//! path counts output samples while decoding and stops at the caller's `max_seconds`, before
//! allocating past it. Buffers grow with the audio actually produced, never beyond the cap, and
//! the source-rate audio of the symphonia path streams through the resampler instead of being
//! held whole. Absurd sample rates and channel counts are refused before decoding.

pub mod opus;
pub mod other;
pub mod resample;

/// Whisper's sample rate.
pub const SAMPLE_RATE: u32 = 16_000;

/// Sample rates a voice note may have; anything else is a damaged or hostile header (and would
/// make the resampler's tables or the source-rate audio absurdly large).
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=192_000;

/// The most channels downmixed to mono (7.1); more is refused, not decoded.
pub const MAX_CHANNELS: usize = 8;

/// Decoded audio: mono, 16 kHz, `f32` in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Pcm {
    pub samples: Vec<f32>,
    /// Duration in seconds (`samples.len() / 16000`).
    pub seconds: f32,
    /// The input held more audio than the caller's `max_seconds`: decoding stopped there and
    /// `samples` are the first `max_seconds` only.
    pub truncated: bool,
}

impl Pcm {
    pub fn new(samples: Vec<f32>) -> Self {
        let seconds = samples.len() as f32 / SAMPLE_RATE as f32;
        Self {
            samples,
            seconds,
            truncated: false,
        }
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
    /// The stream declares a sample rate outside [`SAMPLE_RATES`].
    #[error("unsupported sample rate: {rate} Hz")]
    SampleRate { rate: u32 },
    /// The stream has more than [`MAX_CHANNELS`] channels.
    #[error("unsupported channel count: {count}")]
    Channels { count: usize },
}

impl AudioError {
    pub(crate) fn malformed(format: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Malformed {
            format,
            reason: reason.to_string(),
        }
    }
}

pub(crate) fn check_rate(rate: u32) -> Result<(), AudioError> {
    if SAMPLE_RATES.contains(&rate) {
        Ok(())
    } else {
        Err(AudioError::SampleRate { rate })
    }
}

pub(crate) fn check_channels(count: usize) -> Result<(), AudioError> {
    if count <= MAX_CHANNELS {
        Ok(())
    } else {
        Err(AudioError::Channels { count })
    }
}

/// The output cap in 16 kHz samples. Zero, negative or NaN `max_seconds` allow nothing (the
/// decode then fails as [`AudioError::Empty`]); a huge one is harmless because buffers grow
/// with the audio produced, not with the cap.
fn cap_samples(max_seconds: f32) -> usize {
    if max_seconds.is_nan() || max_seconds <= 0.0 {
        return 0;
    }
    // To the nearest sample, so that a cap written as `n / 16000.0` in f32 is n samples; `as`
    // saturates, so infinity is usize::MAX.
    (max_seconds as f64 * SAMPLE_RATE as f64).round() as usize
}

/// Buffers start this large (10 s at 16 kHz) unless the cap is smaller.
const FIRST_RESERVE: usize = 10 * SAMPLE_RATE as usize;

/// Makes room for `extra` more samples in `v` without its capacity passing `limit` (unless
/// `extra` itself needs more). Doubling keeps appends amortised O(1) as `Vec` does, but `Vec`'s
/// own doubling could reserve up to twice the cap; this stops at it.
pub(crate) fn reserve_bounded(v: &mut Vec<f32>, extra: usize, limit: usize) {
    let need = v.len().saturating_add(extra);
    if need <= v.capacity() {
        return;
    }
    let target = v
        .capacity()
        .saturating_mul(2)
        .max(FIRST_RESERVE)
        .min(limit)
        .max(need);
    v.reserve_exact(target - v.len());
}

/// Decodes `bytes` (announced as `mime`, e.g. `audio/ogg; codecs=opus`) to 16 kHz mono `f32`,
/// at most `max_seconds` of it: a longer input gives its first `max_seconds` with
/// [`Pcm::truncated`] set, and no more than that is ever decoded or allocated.
///
/// The MIME type chooses the decoder; Ogg content is recognised by its magic bytes whatever the
/// label says (`OpusHead` → Opus, otherwise symphonia's Ogg/Vorbis).
pub fn decode_to_pcm16k(bytes: &[u8], mime: &str, max_seconds: f32) -> Result<Pcm, AudioError> {
    let cap = cap_samples(max_seconds);
    // The decoders are third-party code fed untrusted bytes: a panic in one of them is a
    // malformed file, not a crash.
    std::panic::catch_unwind(|| decode_inner(bytes, mime, cap)).unwrap_or_else(|_| {
        Err(AudioError::malformed(
            "audio",
            "decoder panicked on malformed input",
        ))
    })
}

fn decode_inner(bytes: &[u8], mime: &str, cap: usize) -> Result<Pcm, AudioError> {
    let essence = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let pcm = if bytes.starts_with(b"OggS") {
        if opus::is_ogg_opus(bytes) {
            opus::decode_ogg_opus(bytes, cap)?
        } else {
            other::decode_with_symphonia(bytes, Some("ogg"), cap)?
        }
    } else {
        match essence.as_str() {
            "audio/ogg" | "audio/opus" | "application/ogg" => {
                return Err(AudioError::malformed("ogg", "missing OggS capture pattern"));
            }
            "audio/mp4" | "audio/m4a" | "audio/x-m4a" | "audio/aac" | "audio/x-aac" => {
                other::decode_with_symphonia(bytes, Some("m4a"), cap)?
            }
            "audio/mpeg" | "audio/mp3" | "audio/x-mp3" => {
                other::decode_with_symphonia(bytes, Some("mp3"), cap)?
            }
            "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => {
                other::decode_with_symphonia(bytes, Some("wav"), cap)?
            }
            "audio/flac" | "audio/x-flac" => {
                other::decode_with_symphonia(bytes, Some("flac"), cap)?
            }
            _ => return Err(AudioError::Unsupported { mime: essence }),
        }
    };
    if pcm.samples.is_empty() {
        return Err(AudioError::Empty);
    }
    Ok(pcm)
}
