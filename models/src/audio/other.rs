//! Formats symphonia decodes in pure Rust (AAC/M4A, MP3, WAV, FLAC, Ogg/Vorbis), from memory.

use std::io::Cursor;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::{AudioError, Pcm, SAMPLE_RATE, resample};

const FORMAT: &str = "symphonia";

/// Decodes the first audio track, downmixes to mono and resamples to 16 kHz.
pub fn decode_with_symphonia(bytes: &[u8], extension: Option<&str>) -> Result<Pcm, AudioError> {
    // MediaSource needs 'static data; this copy stays in memory.
    let source = Cursor::new(bytes.to_vec());
    let mss = MediaSourceStream::new(Box::new(source), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    let format_opts = FormatOptions {
        enable_gapless: true,
        ..Default::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&hint, mss, &format_opts, &MetadataOptions::default())
        .map_err(|e| AudioError::malformed(FORMAT, e))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::malformed(FORMAT, "no audio track"))?;
    let track_id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(what) => AudioError::Unsupported {
                mime: format!("codec: {what}"),
            },
            e => AudioError::malformed(FORMAT, e),
        })?;

    let mut mono: Vec<f32> = Vec::new();
    let mut rate: Option<u32> = track.codec_params.sample_rate;
    let mut sbuf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) if !mono.is_empty() => {
                tracing::debug!(error = %e, "audio stream ends with a damaged packet");
                break;
            }
            Err(e) => return Err(AudioError::malformed(FORMAT, e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A corrupt frame is skipped, as players do.
            Err(SymError::DecodeError(e)) => {
                tracing::debug!(error = e, "skipping undecodable audio packet");
                continue;
            }
            Err(e) => return Err(AudioError::malformed(FORMAT, e)),
        };
        let spec = *decoded.spec();
        rate = Some(spec.rate);
        let channels = spec.channels.count().max(1);
        let need = decoded.capacity() as u64;
        let buf = match &mut sbuf {
            Some(b) if b.capacity() as u64 >= need * channels as u64 => b,
            slot => slot.insert(SampleBuffer::<f32>::new(need, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        let s = buf.samples();
        if channels == 1 {
            mono.extend_from_slice(s);
        } else {
            let k = 1.0 / channels as f32;
            mono.extend(s.chunks_exact(channels).map(|f| f.iter().sum::<f32>() * k));
        }
    }
    let rate = rate.ok_or_else(|| AudioError::malformed(FORMAT, "unknown sample rate"))?;
    let samples = if rate == SAMPLE_RATE {
        mono
    } else {
        resample::resample(&mono, rate, SAMPLE_RATE)
    };
    Ok(Pcm::new(samples))
}
