//! Voice-note decoding against libopus' own decoder (`opusdec`), on clips the test makes with
//! espeak-ng and opusenc (`scripts/install-test-deps.sh`). Without those tools each test prints
//! a visible `skipped:` line and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use sandra_models::audio::{AudioError, decode_to_pcm16k, opus::OpusHead, resample};

use crate::support::oggbuild;
use oggbuild::ogg_crc;

/// The production default (`transcription.max_audio_seconds`), far above these clips.
const CAP: f32 = 900.0;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn tools_or_skip(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<_> = tools.iter().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        true
    } else {
        println!("skipped: {test}: missing {missing:?} (run scripts/install-test-deps.sh)");
        false
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SENTENCE: &str = "Hello, this is a voice note. Please call me back tomorrow morning.";

/// espeak-ng speech → wav (22.05 kHz) → Ogg/Opus; returns (dir, opus path).
fn make_opus(dir: &Path, extra: &[&str]) -> PathBuf {
    let wav = dir.join("speech.wav");
    run(Command::new("espeak-ng").arg("-w").arg(&wav).arg(SENTENCE));
    let opus = dir.join("speech.opus");
    run(Command::new("opusenc")
        .arg("--quiet")
        .args(extra)
        .arg(&wav)
        .arg(&opus));
    opus
}

/// libopus' reference decode at 16 kHz, f32, no dither.
fn opusdec_16k(dir: &Path, opus: &Path) -> Vec<f32> {
    let raw = dir.join("ref.raw");
    run(Command::new("opusdec")
        .args(["--quiet", "--rate", "16000", "--float"])
        .arg(opus)
        .arg(&raw));
    std::fs::read(&raw)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn snr_db(reference: &[f32], ours: &[f32]) -> f64 {
    let (mut sig, mut noise) = (0f64, 0f64);
    for (r, o) in reference.iter().zip(ours) {
        sig += (*r as f64).powi(2);
        noise += (*r as f64 - *o as f64).powi(2);
    }
    10.0 * (sig / noise.max(1e-20)).log10()
}

/// Best SNR over small alignment shifts (the two decoders may differ by a sample or so).
fn best_snr(reference: &[f32], ours: &[f32]) -> (i32, f64) {
    (-16..=16)
        .map(|s: i32| {
            let (r, o) = if s >= 0 {
                (&reference[s as usize..], ours)
            } else {
                (reference, &ours[(-s) as usize..])
            };
            let n = r.len().min(o.len());
            (s, snr_db(&r[..n], &o[..n]))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
}

fn envelope(x: &[f32]) -> Vec<f64> {
    x.chunks(160)
        .map(|c| c.iter().map(|v| (*v as f64).powi(2)).sum::<f64>())
        .collect()
}

fn envelope_correlation(reference: &[f32], ours: &[f32], shift: i32) -> f64 {
    let (r, o) = if shift >= 0 {
        (&reference[shift as usize..], ours)
    } else {
        (reference, &ours[(-shift) as usize..])
    };
    let (a, b) = (envelope(r), envelope(o));
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

// --- Ogg page surgery (to set header fields and granules) ---

/// (offset, length) of each page.
fn pages(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 27 <= b.len() && &b[i..i + 4] == b"OggS" {
        let nseg = b[i + 26] as usize;
        let body: usize = b[i + 27..i + 27 + nseg].iter().map(|&x| x as usize).sum();
        let len = 27 + nseg + body;
        if i + 27 + nseg > b.len() || i + len > b.len() {
            break;
        }
        out.push((i, len));
        i += len;
    }
    out
}

fn fix_crc(b: &mut [u8], (off, len): (usize, usize)) {
    b[off + 22..off + 26].fill(0);
    let crc = ogg_crc(&b[off..off + len]);
    b[off + 22..off + 26].copy_from_slice(&crc.to_le_bytes());
}

fn set_gain(bytes: &[u8], gain_q8: i16) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let p = pages(&b)[0];
    let head = p.0 + 27 + b[p.0 + 26] as usize;
    assert_eq!(&b[head..head + 8], b"OpusHead");
    b[head + 16..head + 18].copy_from_slice(&gain_q8.to_le_bytes());
    fix_crc(&mut b, p);
    b
}

fn last_granule(bytes: &[u8]) -> u64 {
    let p = *pages(bytes).last().unwrap();
    u64::from_le_bytes(bytes[p.0 + 6..p.0 + 14].try_into().unwrap())
}

fn set_last_granule(bytes: &[u8], g: u64) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let p = *pages(&b).last().unwrap();
    b[p.0 + 6..p.0 + 14].copy_from_slice(&g.to_le_bytes());
    fix_crc(&mut b, p);
    b
}

#[test]
fn ogg_opus_matches_libopus_reference() {
    if !tools_or_skip(
        "ogg_opus_matches_libopus_reference",
        &["espeak-ng", "opusenc", "opusdec"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opus = make_opus(dir.path(), &[]);
    let bytes = std::fs::read(&opus).unwrap();
    let reference = opusdec_16k(dir.path(), &opus);

    let pcm = decode_to_pcm16k(&bytes, "audio/ogg; codecs=opus", CAP).unwrap();
    // Same length: pre-skip removed and the tail trimmed to the final granule position.
    assert!(
        (pcm.samples.len() as i64 - reference.len() as i64).abs() <= 1,
        "ours {} vs opusdec {}",
        pcm.samples.len(),
        reference.len()
    );
    assert!((pcm.seconds - reference.len() as f32 / 16_000.0).abs() < 0.001);
    let (shift, snr) = best_snr(&reference, &pcm.samples);
    println!("opus vs opusdec: shift {shift} samples, SNR {snr:.1} dB");
    // opusdec decodes at 48 kHz and resamples to 16 kHz, so it is one sample off a direct
    // 16 kHz decode and its resampler's phase caps the waveform SNR near 15 dB (rusty-opus is
    // bit-exact with libopus decoding these hybrid-mode clips at 16 kHz); the 10 ms energy
    // envelopes must agree closely.
    assert!(shift.abs() <= 2, "misaligned by {shift} samples");
    assert!(snr > 10.0, "SNR {snr:.1} dB");
    let corr = envelope_correlation(&reference, &pcm.samples, shift);
    println!("envelope correlation {corr:.4}");
    assert!(corr > 0.99, "envelope correlation {corr}");
}

#[test]
fn pre_skip_and_end_trim_follow_the_header_and_granule() {
    if !tools_or_skip("pre_skip_and_end_trim", &["espeak-ng", "opusenc"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(make_opus(dir.path(), &[])).unwrap();
    let pages = pages(&bytes);
    let head_at = pages[0].0 + 27 + bytes[pages[0].0 + 26] as usize;
    let head = OpusHead::parse(&bytes[head_at..]).unwrap();
    assert!(head.pre_skip > 0);
    let g = last_granule(&bytes);
    let pcm = decode_to_pcm16k(&bytes, "audio/ogg", CAP).unwrap();
    assert_eq!(
        pcm.samples.len() as u64,
        (g - head.pre_skip as u64) / 3,
        "length = (final granule - pre-skip) / 3"
    );
    // Pull the final granule 100 ms earlier: exactly 1600 samples fewer.
    let trimmed = decode_to_pcm16k(&set_last_granule(&bytes, g - 4800), "audio/ogg", CAP).unwrap();
    assert_eq!(trimmed.samples.len() + 1600, pcm.samples.len());
    assert_eq!(trimmed.samples[..], pcm.samples[..trimmed.samples.len()]);
}

#[test]
fn output_gain_is_applied() {
    if !tools_or_skip("output_gain_is_applied", &["espeak-ng", "opusenc"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Quiet speech so +6 dB does not clip.
    let wav = dir.path().join("speech.wav");
    run(Command::new("espeak-ng")
        .args(["-a", "40", "-w"])
        .arg(&wav)
        .arg(SENTENCE));
    let opus = dir.path().join("q.opus");
    run(Command::new("opusenc").arg("--quiet").arg(&wav).arg(&opus));
    let bytes = std::fs::read(&opus).unwrap();
    let plain = decode_to_pcm16k(&bytes, "audio/ogg; codecs=opus", CAP).unwrap();
    let louder =
        decode_to_pcm16k(&set_gain(&bytes, 6 * 256), "audio/ogg; codecs=opus", CAP).unwrap();
    let quieter =
        decode_to_pcm16k(&set_gain(&bytes, -6 * 256), "audio/ogg; codecs=opus", CAP).unwrap();
    assert!(
        plain.samples.iter().all(|s| s.abs() < 0.45),
        "clip too loud for the test"
    );
    let g = 10f32.powf(6.0 / 20.0);
    for ((p, l), q) in plain
        .samples
        .iter()
        .zip(&louder.samples)
        .zip(&quieter.samples)
    {
        assert!((p * g - l).abs() < 1e-5);
        assert!((p / g - q).abs() < 1e-5);
    }
}

#[test]
fn stereo_and_other_rates_are_downmixed_to_16k_mono() {
    if !tools_or_skip("stereo_opus", &["espeak-ng", "opusenc", "sox"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    run(Command::new("espeak-ng").arg("-w").arg(&wav).arg(SENTENCE));
    let stereo = dir.path().join("stereo.wav");
    run(Command::new("sox")
        .arg(&wav)
        .args(["-r", "48000", "-c", "2"])
        .arg(&stereo));
    let opus = dir.path().join("stereo.opus");
    run(Command::new("opusenc")
        .arg("--quiet")
        .arg(&stereo)
        .arg(&opus));
    let mono_opus = make_opus(dir.path(), &[]);
    let a = decode_to_pcm16k(&std::fs::read(&opus).unwrap(), "audio/ogg", CAP).unwrap();
    let b = decode_to_pcm16k(&std::fs::read(&mono_opus).unwrap(), "audio/ogg", CAP).unwrap();
    assert!(
        (a.seconds - b.seconds).abs() < 0.01,
        "{} vs {}",
        a.seconds,
        b.seconds
    );
}

/// WAV/FLAC/Vorbis/MP3 go through symphonia and the resampler.
#[test]
fn symphonia_formats_decode_and_resample() {
    if !tools_or_skip("symphonia_formats", &["espeak-ng", "sox"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw_wav = dir.path().join("espeak.wav");
    run(Command::new("espeak-ng")
        .arg("-w")
        .arg(&raw_wav)
        .arg(SENTENCE));
    // espeak-ng writes a streaming header (unknown length); sox rewrites a proper one.
    let wav = dir.path().join("source.wav");
    run(Command::new("sox").arg(&raw_wav).arg(&wav));
    // Reference: sox's own high-quality resample of the same wav.
    let ref_raw = dir.path().join("ref.f32");
    run(Command::new("sox")
        .arg(&wav)
        .args([
            "-r",
            "16000",
            "-e",
            "floating-point",
            "-b",
            "32",
            "-t",
            "raw",
        ])
        .arg(&ref_raw));
    let reference: Vec<f32> = std::fs::read(&ref_raw)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let mut cases = vec![("wav", "audio/wav", 30.0), ("flac", "audio/flac", 30.0)];
    let ogg = dir.path().join("speech.ogg");
    if Command::new("sox")
        .arg(&wav)
        .arg(&ogg)
        .status()
        .is_ok_and(|s| s.success())
    {
        cases.push(("ogg", "audio/ogg", 8.0));
    }
    if have("lame") {
        cases.push(("mp3", "audio/mpeg", 8.0));
    } else {
        println!("skipped: mp3 case (no lame)");
    }
    for (ext, mime, min_snr) in cases {
        let f = dir.path().join(format!("speech.{ext}"));
        if ext == "mp3" {
            run(Command::new("lame")
                .args(["--quiet", "-b", "64"])
                .arg(&wav)
                .arg(&f));
        } else if ext != "ogg" {
            run(Command::new("sox").arg(&wav).arg(&f));
        }
        let pcm = decode_to_pcm16k(&std::fs::read(&f).unwrap(), mime, CAP)
            .unwrap_or_else(|e| panic!("{ext}: {e}"));
        // MP3 adds encoder delay/padding when gapless info is absent.
        let slack = if ext == "mp3" { 2000 } else { 4 };
        assert!(
            (pcm.samples.len() as i64 - reference.len() as i64).abs() <= slack,
            "{ext}: {} vs {}",
            pcm.samples.len(),
            reference.len()
        );
        let (shift, snr) = best_snr(&reference, &pcm.samples);
        println!("{ext}: shift {shift}, SNR vs sox {snr:.1} dB");
        assert!(snr > min_snr, "{ext}: SNR {snr:.1} dB");
    }
}

#[test]
fn bad_input_is_a_typed_error_not_a_panic() {
    assert!(matches!(
        decode_to_pcm16k(b"#!AMR\n\x3c\x00\x00", "audio/amr", CAP),
        Err(AudioError::Unsupported { .. })
    ));
    assert!(matches!(
        decode_to_pcm16k(b"", "audio/ogg; codecs=opus", CAP),
        Err(AudioError::Malformed { .. })
    ));
    assert!(matches!(
        decode_to_pcm16k(b"not audio at all", "audio/ogg", CAP),
        Err(AudioError::Malformed { .. })
    ));
    assert!(decode_to_pcm16k(b"garbage garbage garbage", "audio/mpeg", CAP).is_err());
    assert!(decode_to_pcm16k(b"OggS\0\0\0", "audio/ogg", CAP).is_err());
    assert!(matches!(
        decode_to_pcm16k(&[0u8; 64], "video/mp4", CAP),
        Err(AudioError::Unsupported { .. })
    ));
}

#[test]
fn damaged_opus_never_panics() {
    if !tools_or_skip("damaged_opus_never_panics", &["espeak-ng", "opusenc"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(make_opus(dir.path(), &[])).unwrap();
    // Truncations at many points, and corrupted bytes (page CRCs make most pages vanish, so
    // also corrupt after recomputing CRCs).
    for cut in (0..bytes.len()).step_by(97) {
        let _ = decode_to_pcm16k(&bytes[..cut], "audio/ogg", CAP);
    }
    let mut seed = 0x1234_5678u32;
    for _ in 0..50 {
        let mut b = bytes.to_vec();
        for _ in 0..20 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let i = 200 + (seed as usize % (b.len() - 200));
            b[i] ^= (seed >> 24) as u8 | 1;
        }
        for p in pages(&b) {
            fix_crc(&mut b, p);
        }
        let _ = decode_to_pcm16k(&b, "audio/ogg; codecs=opus", CAP);
    }
}

// --- Bounded decoding: output is capped by `max_seconds`, whatever the input declares ---

#[test]
fn ogg_of_empty_packets_stops_at_the_cap() {
    // Each 282-byte page conceals 255 lost 20 ms frames: 3 MB declares ~15 hours, 16 MB (the
    // media limit) ~80 hours. Decoding keeps the first minute and says it stopped.
    for size in [3 << 20, 16 << 20] {
        let bomb = oggbuild::empty_packet_bomb(size);
        let pcm = decode_to_pcm16k(&bomb, "audio/ogg; codecs=opus", 60.0).unwrap();
        assert!(pcm.truncated, "{size} bytes: not flagged as truncated");
        assert_eq!(pcm.samples.len(), 60 * 16_000, "{size} bytes");
        assert!(
            pcm.samples.capacity() <= 60 * 16_000,
            "{size} bytes: capacity"
        );
        assert_eq!(pcm.seconds, 60.0);
    }
}

/// 20 ms Opus packets of the test tone, encoded in-process.
fn opus_packets(seconds: f32) -> Vec<Vec<u8>> {
    use rusty_opus::{Application, OpusEncoder};
    let mut enc = OpusEncoder::new(16_000, 1, Application::Voip).unwrap();
    let mut out = vec![0u8; 1500];
    oggbuild::tone(16_000, seconds)
        .chunks_exact(320)
        .map(|frame| {
            let n = enc.encode(frame, 320, &mut out).unwrap();
            out[..n].to_vec()
        })
        .collect()
}

#[test]
fn opus_clip_under_the_cap_is_whole_and_over_it_is_cut_exactly() {
    let clip = oggbuild::opus_stream(312, &opus_packets(10.0));
    let whole = decode_to_pcm16k(&clip, "audio/ogg; codecs=opus", CAP).unwrap();
    assert!(!whole.truncated);
    // (final granule - pre-skip) / 3: 500 packets of 320 samples less 104 of pre-skip.
    assert_eq!(whole.samples.len(), 159_896);
    let rms = (whole.samples.iter().map(|x| x * x).sum::<f32>() / 159_896.0).sqrt();
    assert!(rms > 0.1, "decoded tone is silent (rms {rms})");
    // A cap equal to the clip's length is not a truncation.
    let exact = decode_to_pcm16k(&clip, "audio/ogg", 159_896.0 / 16_000.0).unwrap();
    assert!(!exact.truncated);
    assert_eq!(exact.samples, whole.samples);
    // A shorter cap keeps exactly the first 4 s, sample for sample.
    let cut = decode_to_pcm16k(&clip, "audio/ogg", 4.0).unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.samples.len(), 64_000);
    assert_eq!(cut.samples[..], whole.samples[..64_000]);
}

fn to_i16(x: &[f32]) -> Vec<i16> {
    x.iter().map(|v| (v * 32767.0) as i16).collect()
}

#[test]
fn wav_under_the_cap_is_whole_and_over_it_is_cut_exactly() {
    // 48 kHz goes through the resampler, 16 kHz straight through.
    for rate in [48_000, 16_000] {
        let frames = to_i16(&oggbuild::tone(rate, 5.0));
        let clip = oggbuild::wav(rate, 1, &frames);
        let whole = decode_to_pcm16k(&clip, "audio/wav", CAP).unwrap();
        assert!(!whole.truncated, "{rate} Hz");
        assert_eq!(whole.samples.len(), 80_000, "{rate} Hz");
        // Unchanged: the same as resampling the whole input at once.
        let src: Vec<f32> = frames.iter().map(|&s| s as f32 / 32768.0).collect();
        assert_eq!(
            whole.samples,
            resample::resample(&src, rate, 16_000),
            "{rate} Hz"
        );
        let exact = decode_to_pcm16k(&clip, "audio/wav", 5.0).unwrap();
        assert!(!exact.truncated, "{rate} Hz");
        let cut = decode_to_pcm16k(&clip, "audio/wav", 2.0).unwrap();
        assert!(cut.truncated, "{rate} Hz");
        assert_eq!(cut.samples.len(), 32_000, "{rate} Hz");
        assert_eq!(cut.samples[..], whole.samples[..32_000], "{rate} Hz");
    }
}

#[test]
fn absurd_sample_rates_are_refused() {
    let frames = vec![1000i16; 4000];
    for rate in [0, 1, 7_999, 192_001, 10_000_000] {
        assert_eq!(
            decode_to_pcm16k(&oggbuild::wav(rate, 1, &frames), "audio/wav", CAP),
            Err(AudioError::SampleRate { rate }),
            "{rate} Hz"
        );
    }
    // The edges of the range decode.
    for rate in [8_000, 192_000] {
        let pcm = decode_to_pcm16k(&oggbuild::wav(rate, 1, &frames), "audio/wav", CAP).unwrap();
        assert_eq!(
            pcm.samples.len() as u64,
            4000 * 16_000 / rate as u64,
            "{rate} Hz"
        );
    }
}

#[test]
fn more_than_eight_channels_are_refused() {
    let frames = vec![1000i16; 100 * 64];
    for channels in [9, 26, 100] {
        assert_eq!(
            decode_to_pcm16k(&oggbuild::wav(16_000, channels, &frames), "audio/wav", CAP),
            Err(AudioError::Channels {
                count: channels as usize
            }),
            "{channels} channels"
        );
    }
    // 7.1 is downmixed to mono.
    let pcm = decode_to_pcm16k(&oggbuild::wav(16_000, 8, &frames), "audio/wav", CAP).unwrap();
    assert_eq!(pcm.samples.len(), 100 * 64 / 8);
    assert!((pcm.samples[0] - 1000.0 / 32768.0).abs() < 1e-6);
}

#[test]
fn resampler_stops_at_its_cap_and_streams_like_one_call() {
    let input = oggbuild::tone(44_100, 3.0);
    let whole = resample::resample(&input, 44_100, 16_000);
    assert_eq!(whole.len(), 3 * 16_000);
    // Fed in odd-sized pieces, as packets arrive: the same samples.
    let mut r = resample::Resampler::new(44_100, 16_000, usize::MAX);
    let mut streamed = Vec::new();
    for piece in input.chunks(1_153) {
        r.push(piece, &mut streamed);
    }
    r.finish(&mut streamed);
    assert_eq!(streamed, whole);
    // Capped: exactly the cap, the same first samples, no room reserved beyond them.
    let mut r = resample::Resampler::new(44_100, 16_000, 10_000);
    let mut capped = Vec::new();
    for piece in input.chunks(1_153) {
        r.push(piece, &mut capped);
    }
    r.finish(&mut capped);
    assert!(r.is_full() && r.truncated());
    assert_eq!(capped.len(), 10_000);
    assert!(
        capped.capacity() <= 10_000,
        "capacity {}",
        capped.capacity()
    );
    assert_eq!(capped[..], whole[..10_000]);
}
