//! Mono PCM → an Ogg/Opus voice note in memory, in the shape of WhatsApp's own voice notes.
//!
//! WhatsApp records voice notes as Ogg/Opus, mono, 16 kHz, in 20 ms frames; the Cloud API takes
//! `audio/ogg` only with Opus inside, and the play button (rather than a download icon) shows
//! only for files up to 512 KB. Some Android phones fail to play unusual rates (48 kHz notes
//! from other assistants), so the encoder runs at 16 kHz, one of Opus's native rates: the
//! voice's 22.05 kHz output is resampled once, in memory ([`crate::audio::resample`]), and the
//! OpusHead says 16000 Hz as WhatsApp's do. Speech at 24 kbit/s is about 3 KB a second, so the
//! 512 KB limit is nearly three minutes.
//!
//! Encoding is libopus from the system (Debian `libopus-dev` to build, `libopus0` to run),
//! through `opusic-sys` without its bundled copy; the container is written with `ogg`. Nothing
//! touches the disk. Ogg/Opus framing (RFC 7845): an `OpusHead` page, an `OpusTags` page, then
//! audio pages whose granule position counts 48 kHz samples including the pre-skip (the
//! encoder's look-ahead), the last one marking the true end so players trim the padding.

use std::ffi::c_int;

use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use opusic_sys as ffi;

use super::SpeechError;

/// The encoder's sample rate, and the rate the `OpusHead` declares.
pub const VOICE_NOTE_RATE: u32 = 16_000;
/// 20 ms frames, as voice notes use.
pub const FRAME_SAMPLES: usize = VOICE_NOTE_RATE as usize / 50;
/// Target bit rate: clear speech, small files.
pub const BITRATE: i32 = 24_000;
/// Granule positions count 48 kHz samples whatever the input rate (RFC 7845 §4).
const GRANULE_PER_SAMPLE: u64 = (48_000 / VOICE_NOTE_RATE) as u64;
/// Audio packets per Ogg page (one second): pages small enough to stream, few enough to keep the
/// overhead under 1%.
const PACKETS_PER_PAGE: usize = 50;
/// The largest packet libopus can produce (RFC 6716 §3.4: 1275 bytes per frame).
const MAX_PACKET: usize = 1275;

/// An encoded voice note.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceNote {
    /// The whole `.ogg` file.
    pub ogg: Vec<u8>,
    /// Its playing time.
    pub seconds: f32,
}

impl VoiceNote {
    /// The MIME type to upload it as.
    pub const MIME: &'static str = "audio/ogg; codecs=opus";
}

/// A libopus encoder, destroyed on drop.
struct Encoder(*mut ffi::OpusEncoder);

impl Encoder {
    fn new() -> Result<Self, SpeechError> {
        let mut err: c_int = 0;
        // SAFETY: valid rate, channel count and application; `err` outlives the call.
        let st = unsafe {
            ffi::opus_encoder_create(
                VOICE_NOTE_RATE as i32,
                1,
                ffi::OPUS_APPLICATION_VOIP,
                &mut err,
            )
        };
        if st.is_null() || err != ffi::OPUS_OK {
            return Err(SpeechError::Encode(format!(
                "opus_encoder_create: error {err}"
            )));
        }
        let enc = Encoder(st);
        enc.ctl(ffi::OPUS_SET_BITRATE_REQUEST, BITRATE)?;
        enc.ctl(ffi::OPUS_SET_SIGNAL_REQUEST, ffi::OPUS_SIGNAL_VOICE)?;
        Ok(enc)
    }

    fn ctl(&self, request: c_int, value: i32) -> Result<(), SpeechError> {
        // SAFETY: a live encoder; these SET requests take one `opus_int32` argument.
        let rc = unsafe { ffi::opus_encoder_ctl(self.0, request, value) };
        if rc != ffi::OPUS_OK {
            return Err(SpeechError::Encode(format!(
                "opus_encoder_ctl({request}): {rc}"
            )));
        }
        Ok(())
    }

    /// Samples (at 16 kHz) the encoder delays its output by.
    fn lookahead(&self) -> Result<usize, SpeechError> {
        let mut v: i32 = 0;
        // SAFETY: a live encoder; the GET request writes one `opus_int32` through the pointer.
        let rc = unsafe {
            ffi::opus_encoder_ctl(self.0, ffi::OPUS_GET_LOOKAHEAD_REQUEST, &mut v as *mut i32)
        };
        if rc != ffi::OPUS_OK || v < 0 {
            return Err(SpeechError::Encode(format!("OPUS_GET_LOOKAHEAD: {rc}")));
        }
        Ok(v as usize)
    }

    fn encode(&mut self, frame: &[f32], out: &mut [u8]) -> Result<usize, SpeechError> {
        debug_assert_eq!(frame.len(), FRAME_SAMPLES);
        // SAFETY: `frame` holds exactly one 20 ms mono frame; `out` is writable for its length.
        let n = unsafe {
            ffi::opus_encode_float(
                self.0,
                frame.as_ptr(),
                FRAME_SAMPLES as c_int,
                out.as_mut_ptr(),
                out.len() as i32,
            )
        };
        if n < 0 {
            return Err(SpeechError::Encode(format!("opus_encode_float: {n}")));
        }
        Ok(n as usize)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: created by `opus_encoder_create`, destroyed once.
        unsafe { ffi::opus_encoder_destroy(self.0) }
    }
}

/// Encodes 16 kHz mono `f32` PCM (in [-1, 1]) into an Ogg/Opus voice note.
pub fn encode_voice_note(pcm: &[f32]) -> Result<VoiceNote, SpeechError> {
    if pcm.is_empty() {
        return Err(SpeechError::Encode("no audio to encode".into()));
    }
    let mut enc = Encoder::new()?;
    let lookahead = enc.lookahead()?;
    let pre_skip = lookahead as u64 * GRANULE_PER_SAMPLE;
    // Feed the look-ahead's worth of silence after the audio so its end comes out, then pad to
    // whole frames; the last granule position tells players where the real audio ends.
    let total = pcm.len() + lookahead;
    let frames = total.div_ceil(FRAME_SAMPLES);
    let end_granule = pre_skip + pcm.len() as u64 * GRANULE_PER_SAMPLE;

    let serial = stream_serial(pcm);
    let mut ogg = Vec::with_capacity(pcm.len() / 4 + 1024);
    let mut w = PacketWriter::new(&mut ogg);
    let io = |e: std::io::Error| SpeechError::Encode(format!("ogg: {e}"));
    w.write_packet(
        opus_head(pre_skip as u16),
        serial,
        PacketWriteEndInfo::EndPage,
        0,
    )
    .map_err(io)?;
    w.write_packet(opus_tags(), serial, PacketWriteEndInfo::EndPage, 0)
        .map_err(io)?;

    let mut frame = vec![0f32; FRAME_SAMPLES];
    let mut packet = [0u8; MAX_PACKET];
    for f in 0..frames {
        let start = f * FRAME_SAMPLES;
        for (i, s) in frame.iter_mut().enumerate() {
            *s = pcm.get(start + i).map_or(0.0, |v| v.clamp(-1.0, 1.0));
        }
        let n = enc.encode(&frame, &mut packet)?;
        let last = f + 1 == frames;
        // 48 kHz samples decoded up to this packet's end, counting the pre-skip; the last
        // packet's says where the real audio ends.
        let granule = if last {
            end_granule
        } else {
            ((f + 1) * FRAME_SAMPLES) as u64 * GRANULE_PER_SAMPLE
        };
        let end = if last {
            PacketWriteEndInfo::EndStream
        } else if (f + 1) % PACKETS_PER_PAGE == 0 {
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        w.write_packet(packet[..n].to_vec(), serial, end, granule)
            .map_err(io)?;
    }
    drop(w);
    Ok(VoiceNote {
        ogg,
        seconds: pcm.len() as f32 / VOICE_NOTE_RATE as f32,
    })
}

/// RFC 7845 §5.1: version 1, mono, pre-skip, the input rate, no gain, mapping family 0.
fn opus_head(pre_skip: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(19);
    h.extend_from_slice(b"OpusHead");
    h.push(1);
    h.push(1);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&VOICE_NOTE_RATE.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

/// RFC 7845 §5.2: the vendor string (libopus's version) and no comments.
fn opus_tags() -> Vec<u8> {
    // SAFETY: libopus returns a static NUL-terminated string.
    let vendor = unsafe { std::ffi::CStr::from_ptr(ffi::opus_get_version_string()) }
        .to_bytes()
        .to_vec();
    let mut t = Vec::with_capacity(16 + vendor.len());
    t.extend_from_slice(b"OpusTags");
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(&vendor);
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}

/// An Ogg stream serial number; any value is valid for a single-stream file, so it is derived
/// from the audio instead of a random source.
fn stream_serial(pcm: &[f32]) -> u32 {
    pcm.iter()
        .step_by(97)
        .fold(0x5A4D_u32, |h, s| h.rotate_left(5) ^ s.to_bits())
}

/// Test support: decodes an Ogg/Opus file with libopus (not with Sandra's own decoder, so the
/// encoder is checked against the reference), honouring pre-skip and the final granule. Returns
/// the OpusHead's channel count and input rate, and the 16 kHz samples.
#[cfg(test)]
pub(crate) fn decode_with_libopus(bytes: &[u8]) -> (u8, u32, Vec<f32>) {
    use std::io::Cursor;
    let mut r = ogg::reading::PacketReader::new(Cursor::new(bytes));
    let head = r.read_packet_expected().unwrap();
    assert_eq!(&head.data[..8], b"OpusHead");
    let channels = head.data[9];
    let pre_skip = u16::from_le_bytes([head.data[10], head.data[11]]) as usize / 3;
    let rate = u32::from_le_bytes(head.data[12..16].try_into().unwrap());
    let tags = r.read_packet_expected().unwrap();
    assert_eq!(&tags.data[..8], b"OpusTags");
    let mut err = 0;
    // SAFETY: valid arguments; destroyed below.
    let dec = unsafe { ffi::opus_decoder_create(16_000, 1, &mut err) };
    assert!(!dec.is_null() && err == 0);
    let mut out = Vec::new();
    let mut buf = vec![0f32; 5760];
    let mut last_granule = 0;
    while let Some(p) = r.read_packet().unwrap() {
        // SAFETY: a live decoder, a packet slice and a buffer of 120 ms at 48 kHz.
        let n = unsafe {
            ffi::opus_decode_float(
                dec,
                p.data.as_ptr(),
                p.data.len() as i32,
                buf.as_mut_ptr(),
                buf.len() as c_int,
                0,
            )
        };
        assert!(n >= 0, "opus_decode_float: {n}");
        out.extend_from_slice(&buf[..n as usize]);
        if p.last_in_stream() {
            last_granule = p.absgp_page();
        }
    }
    // SAFETY: created above, destroyed once.
    unsafe { ffi::opus_decoder_destroy(dec) };
    let end = (last_granule as usize / 3).min(out.len());
    (channels, rate, out[pre_skip.min(end)..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(seconds: f32, hz: f32) -> Vec<f32> {
        let n = (seconds * VOICE_NOTE_RATE as f32) as usize;
        (0..n)
            .map(|i| {
                0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / VOICE_NOTE_RATE as f32).sin()
            })
            .collect()
    }

    #[test]
    fn voice_note_is_mono_16k_opus_of_the_same_duration() {
        let pcm = tone(2.345, 440.0);
        let note = encode_voice_note(&pcm).unwrap();
        assert!((note.seconds - 2.345).abs() < 1e-3);
        assert_eq!(&note.ogg[..4], b"OggS");
        let (channels, rate, decoded) = decode_with_libopus(&note.ogg);
        assert_eq!(channels, 1);
        assert_eq!(rate, 16_000);
        // Exactly as long as the input: the pre-skip and the end granule trim the padding.
        assert_eq!(decoded.len(), pcm.len());
    }

    #[test]
    fn decoded_audio_follows_the_input_after_the_codec_delay() {
        let pcm = tone(1.0, 300.0);
        let note = encode_voice_note(&pcm).unwrap();
        let (_, _, decoded) = decode_with_libopus(&note.ogg);
        // Lossy, but a clean tone comes back aligned: compare energy and correlation in the
        // middle (the pre-skip removed the encoder's delay).
        let mid = 4000..12000;
        let dot: f32 = mid.clone().map(|i| pcm[i] * decoded[i]).sum();
        let e_in: f32 = mid.clone().map(|i| pcm[i] * pcm[i]).sum();
        let e_out: f32 = mid.map(|i| decoded[i] * decoded[i]).sum();
        let corr = dot / (e_in.sqrt() * e_out.sqrt());
        assert!(corr > 0.9, "correlation {corr}");
        assert!(
            (e_out / e_in - 1.0).abs() < 0.2,
            "energy ratio {}",
            e_out / e_in
        );
    }

    #[test]
    fn sandras_own_decoder_reads_the_notes_it_sends() {
        let pcm = tone(1.5, 220.0);
        let note = encode_voice_note(&pcm).unwrap();
        let back = crate::audio::decode_to_pcm16k(&note.ogg, VoiceNote::MIME, 60.0).unwrap();
        assert_eq!(back.samples.len(), pcm.len());
    }

    #[test]
    fn pages_are_small_and_the_file_fits_the_play_button_limit() {
        // Three minutes of signal stays under the 512 KB limit of a playable voice note.
        let pcm = tone(170.0, 200.0);
        let note = encode_voice_note(&pcm).unwrap();
        assert!(note.ogg.len() < 512 * 1024, "{} bytes", note.ogg.len());
        let pages = note.ogg.windows(4).filter(|w| w == b"OggS").count();
        assert!(pages >= 170, "{pages} pages");
    }

    #[test]
    fn empty_audio_is_an_error() {
        assert!(encode_voice_note(&[]).is_err());
    }
}
