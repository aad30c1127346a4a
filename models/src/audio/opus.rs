//! Ogg/Opus → 16 kHz mono, in memory (RFC 7845 framing, `rusty-opus` for the packets).
//!
//! Opus timestamps (granule positions, pre-skip) count 48 kHz samples whatever the decode rate;
//! decoding at 16 kHz divides them by 3. The decoder is created at 16 kHz directly, which is as
//! exact as decoding at 48 kHz and resampling, and cheaper.

use std::io::Cursor;

use ogg::reading::PacketReader;
use rusty_opus::OpusDecoder;

use super::{AudioError, Pcm, SAMPLE_RATE};

const FORMAT: &str = "ogg/opus";
/// 48 kHz granule units per output sample at 16 kHz.
const RATIO: u64 = (48_000 / SAMPLE_RATE) as u64;

/// The `OpusHead` identification header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusHead {
    pub channels: u8,
    /// Samples (at 48 kHz) to drop from the start of the decoded stream.
    pub pre_skip: u16,
    pub input_sample_rate: u32,
    /// Gain to apply to the output, Q7.8 dB.
    pub output_gain: i16,
    pub mapping_family: u8,
}

impl OpusHead {
    pub fn parse(p: &[u8]) -> Result<Self, AudioError> {
        if p.len() < 19 || &p[..8] != b"OpusHead" {
            return Err(AudioError::malformed(
                FORMAT,
                "first packet is not OpusHead",
            ));
        }
        if p[8] >> 4 != 0 {
            return Err(AudioError::malformed(
                FORMAT,
                format!("unsupported OpusHead version {}", p[8]),
            ));
        }
        Ok(Self {
            channels: p[9],
            pre_skip: u16::from_le_bytes([p[10], p[11]]),
            input_sample_rate: u32::from_le_bytes([p[12], p[13], p[14], p[15]]),
            output_gain: i16::from_le_bytes([p[16], p[17]]),
            mapping_family: p[18],
        })
    }

    /// Linear factor for `output_gain`.
    pub fn gain_factor(&self) -> f32 {
        10f32.powf(self.output_gain as f32 / (20.0 * 256.0))
    }
}

/// True when the first Ogg packet of `bytes` is an `OpusHead`.
pub fn is_ogg_opus(bytes: &[u8]) -> bool {
    let mut r = PacketReader::new(Cursor::new(bytes));
    matches!(r.read_packet(), Ok(Some(p)) if p.data.starts_with(b"OpusHead"))
}

/// Decodes the first Opus logical stream of an Ogg file to 16 kHz mono, at most `cap` samples.
pub fn decode_ogg_opus(bytes: &[u8], cap: usize) -> Result<Pcm, AudioError> {
    let mut reader = PacketReader::new(Cursor::new(bytes));
    let first = reader
        .read_packet()
        .map_err(|e| AudioError::malformed(FORMAT, e))?
        .ok_or_else(|| AudioError::malformed(FORMAT, "no packets"))?;
    let head = OpusHead::parse(&first.data)?;
    let serial = first.stream_serial();
    if head.mapping_family != 0 || !(1..=2).contains(&head.channels) {
        return Err(AudioError::malformed(
            FORMAT,
            format!(
                "channel mapping family {} with {} channels is not supported",
                head.mapping_family, head.channels
            ),
        ));
    }
    let channels = head.channels as usize;
    let mut decoder = OpusDecoder::new(SAMPLE_RATE as i32, channels)
        .map_err(|e| AudioError::malformed(FORMAT, e))?;

    // The pre-skip is decoded and dropped, so the decoded stream may hold `start + cap` samples;
    // one packet more tells that the input goes on past the cap.
    let start = (head.pre_skip as u64 / RATIO) as usize;
    let wanted = start.saturating_add(cap);
    // 120 ms, the longest Opus packet, at 16 kHz, per channel.
    const MAX_FRAME: usize = 1920;
    // Samples are checked against `wanted` before each packet, so one packet may overshoot.
    let limit = wanted.saturating_add(MAX_FRAME);
    let mut out: Vec<f32> = Vec::new();
    let mut buf = vec![0f32; MAX_FRAME * channels];
    // An empty packet (a lost frame) is concealed for as long as the packet before it. That is
    // the amplification to bound: one lacing byte of input, up to 120 ms of output.
    let mut last_n = SAMPLE_RATE as usize / 50;
    let mut seen_tags = false;
    let mut last_granule: Option<u64> = None;
    let mut truncated = false;
    loop {
        let packet = match reader.read_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            // A truncated tail (a voice note cut short in transit) keeps what decoded so far.
            Err(e) if !out.is_empty() => {
                tracing::debug!(error = %e, "ogg/opus stream ends with a damaged page");
                break;
            }
            Err(e) => return Err(AudioError::malformed(FORMAT, e)),
        };
        if packet.stream_serial() != serial {
            continue;
        }
        if !seen_tags {
            if !packet.data.starts_with(b"OpusTags") {
                return Err(AudioError::malformed(
                    FORMAT,
                    "second packet is not OpusTags",
                ));
            }
            seen_tags = true;
            continue;
        }
        if out.len() >= wanted {
            // Audio beyond the cap: stop before decoding it.
            truncated = true;
            break;
        }
        let frame = if packet.data.is_empty() {
            last_n
        } else {
            MAX_FRAME
        };
        let n = decoder
            .decode(&packet.data, frame, &mut buf)
            .map_err(|e| AudioError::malformed(FORMAT, e))?;
        last_n = n.clamp(1, MAX_FRAME);
        let n = n.min(MAX_FRAME);
        super::reserve_bounded(&mut out, n, limit);
        if channels == 1 {
            out.extend_from_slice(&buf[..n]);
        } else {
            out.extend(buf[..2 * n].chunks_exact(2).map(|lr| 0.5 * (lr[0] + lr[1])));
        }
        if packet.last_in_page() {
            last_granule = Some(packet.absgp_page());
        }
        if packet.last_in_stream() {
            break;
        }
    }
    if !seen_tags {
        return Err(AudioError::malformed(FORMAT, "no OpusTags header"));
    }

    let mut end = out.len();
    // End trimming: the last granule position is the number of 48 kHz samples (pre-skip
    // included) the stream really holds; the final packet may decode further than that. A
    // stream stopped at the cap has not reached its end, so its last granule so far is not one.
    if !truncated && let Some(g) = last_granule.filter(|&g| g != u64::MAX) {
        // Samples the stream holds after the pre-skip, at 16 kHz (truncated, as libopus'
        // opusdec does when it decodes at 16 kHz).
        let keep = (g.saturating_sub(head.pre_skip as u64) / RATIO) as usize;
        end = end.min(start.saturating_add(keep));
    }
    if end > wanted {
        truncated = true;
        end = wanted;
    }
    // In place: a second buffer would double the peak for a long note.
    out.truncate(end);
    out.drain(..start.min(end));
    out.shrink_to_fit();
    if head.output_gain != 0 {
        let gain = head.gain_factor();
        out.iter_mut()
            .for_each(|s| *s = (*s * gain).clamp(-1.0, 1.0));
    }
    Ok(Pcm {
        truncated,
        ..Pcm::new(out)
    })
}
