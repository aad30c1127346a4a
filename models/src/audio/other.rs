//! Formats symphonia decodes in pure Rust (AAC/M4A, MP3, WAV, FLAC, Ogg/Vorbis), from memory.

use std::io::Cursor;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::resample::Resampler;
use super::{AudioError, Pcm, SAMPLE_RATE, check_channels, check_rate};

const FORMAT: &str = "symphonia";

/// Decodes the first audio track, downmixes to mono and resamples to 16 kHz, at most `cap`
/// output samples.
pub fn decode_with_symphonia(
    bytes: &[u8],
    extension: Option<&str>,
    cap: usize,
) -> Result<Pcm, AudioError> {
    check_wav_header(bytes)?;
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
    // Refused before any decoding; each decoded packet is checked again below, as a stream
    // may not declare these up front.
    if let Some(rate) = track.codec_params.sample_rate {
        check_rate(rate)?;
    }
    if let Some(ch) = track.codec_params.channels {
        check_channels(ch.count())?;
    }
    let declared_rate = track.codec_params.sample_rate;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(what) => AudioError::Unsupported {
                mime: format!("codec: {what}"),
            },
            e => AudioError::malformed(FORMAT, e),
        })?;

    // 16 kHz output, grown as it is produced up to `cap`; the source-rate audio exists only one
    // packet at a time (`mono`) and in the resampler's kernel window.
    let mut out: Vec<f32> = Vec::new();
    let mut mono: Vec<f32> = Vec::new();
    let mut resampler: Option<(u32, Resampler)> = None;
    let mut sbuf: Option<SampleBuffer<f32>> = None;
    let mut decoded_any = false;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) if decoded_any => {
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
        check_rate(spec.rate)?;
        let channels = spec.channels.count().max(1);
        check_channels(channels)?;
        let rs = match &mut resampler {
            Some((rate, rs)) if *rate == spec.rate => rs,
            // One rate per stream: a change mid-stream (a spliced file) ends it there.
            Some((rate, _)) => {
                tracing::debug!(
                    from = *rate,
                    to = spec.rate,
                    "sample rate changes mid-stream"
                );
                break;
            }
            slot => {
                &mut slot
                    .insert((spec.rate, Resampler::new(spec.rate, SAMPLE_RATE, cap)))
                    .1
            }
        };
        decoded_any = true;
        let need = decoded.capacity() as u64;
        let buf = match &mut sbuf {
            Some(b) if b.capacity() as u64 >= need * channels as u64 => b,
            slot => slot.insert(SampleBuffer::<f32>::new(need, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        let s = buf.samples();
        mono.clear();
        if channels == 1 {
            mono.extend_from_slice(s);
        } else {
            let k = 1.0 / channels as f32;
            mono.extend(s.chunks_exact(channels).map(|f| f.iter().sum::<f32>() * k));
        }
        rs.push(&mono, &mut out);
        if rs.is_full() && rs.truncated() {
            // The cap is reached and the input already holds more: stop decoding.
            break;
        }
    }
    let Some((_, mut rs)) = resampler else {
        return match declared_rate {
            Some(_) => Ok(Pcm::new(Vec::new())),
            None => Err(AudioError::malformed(FORMAT, "unknown sample rate")),
        };
    };
    rs.finish(&mut out);
    out.shrink_to_fit();
    Ok(Pcm {
        truncated: rs.truncated(),
        ..Pcm::new(out)
    })
}

/// Checks a RIFF/WAVE `fmt ` chunk's rate and channel count before symphonia reads it:
/// symphonia panics on a 0 Hz rate and accepts up to 26 channels at any rate.
fn check_wav_header(bytes: &[u8]) -> Result<(), AudioError> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Ok(());
    }
    let mut at = 12usize;
    while let Some(head) = at.checked_add(8).and_then(|end| bytes.get(at..end)) {
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let body = at + 8;
        if &head[..4] == b"fmt " {
            let fmt = bytes
                .get(body..body + 8)
                .ok_or_else(|| AudioError::malformed("wav", "short fmt chunk"))?;
            check_channels(u16::from_le_bytes([fmt[2], fmt[3]]) as usize)?;
            return check_rate(u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]));
        }
        // Chunks are padded to an even length.
        at = body.saturating_add(len).saturating_add(len & 1);
    }
    Ok(())
}
