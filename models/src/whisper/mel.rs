//! Whisper's log-mel front end: 80 (or 128) Slaney mel bins over a 400-point STFT at 16 kHz.
//!
//! The filter bank is computed the way librosa's `filters.mel(sr=16000, n_fft=400, n_mels=80,
//! htk=False, norm="slaney")` does (candle-transformers ships it only as an opaque byte blob):
//! triangles equally spaced on the Slaney mel scale (linear below 1 kHz, logarithmic above),
//! each scaled to unit area in Hz.

use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
/// Samples in one 30 s window.
pub const WINDOW_SAMPLES: usize = 30 * SAMPLE_RATE;
/// Mel frames in one 30 s window.
pub const WINDOW_FRAMES: usize = WINDOW_SAMPLES / HOP;

const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

/// Hz → Slaney mel.
pub fn hz_to_mel(f: f64) -> f64 {
    if f < MIN_LOG_HZ {
        f / F_SP
    } else {
        MIN_LOG_MEL + (f / MIN_LOG_HZ).ln() / log_step()
    }
}

/// Slaney mel → Hz.
pub fn mel_to_hz(m: f64) -> f64 {
    if m < MIN_LOG_MEL {
        m * F_SP
    } else {
        MIN_LOG_HZ * (log_step() * (m - MIN_LOG_MEL)).exp()
    }
}

/// The `[n_mels, n_fft / 2 + 1]` filter bank, row-major.
pub fn mel_filters(sample_rate: usize, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|k| k as f64 * sample_rate as f64 / n_fft as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sample_rate as f64 / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = vec![0f32; n_mels * n_bins];
    for m in 0..n_mels {
        let (left, centre, right) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let enorm = 2.0 / (right - left);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - left) / (centre - left);
            let upper = (right - f) / (right - centre);
            let w = lower.min(upper).max(0.0);
            out[m * n_bins + k] = (w * enorm) as f32;
        }
    }
    out
}

/// Turns PCM into Whisper's normalised log-mel input. Cheap to clone (shared FFT plan).
#[derive(Clone)]
pub struct MelExtractor {
    n_mels: usize,
    /// Per mel row: first non-zero bin and the non-zero weights.
    rows: Arc<Vec<(usize, Vec<f32>)>>,
    window: Arc<Vec<f32>>,
    fft: Arc<dyn Fft<f32>>,
}

impl MelExtractor {
    pub fn new(n_mels: usize) -> Self {
        let n_bins = N_FFT / 2 + 1;
        let bank = mel_filters(SAMPLE_RATE, N_FFT, n_mels);
        let rows = (0..n_mels)
            .map(|m| {
                let row = &bank[m * n_bins..(m + 1) * n_bins];
                let first = row.iter().position(|&w| w > 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w > 0.0).unwrap_or(0);
                (first, row[first..=last.max(first)].to_vec())
            })
            .collect();
        // Periodic Hann window, as torch.hann_window(400).
        let window = (0..N_FFT)
            .map(|n| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let fft = FftPlanner::new().plan_fft_forward(N_FFT);
        Self {
            n_mels,
            rows: Arc::new(rows),
            window: Arc::new(window),
            fft,
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Log-mel of one 30 s window: `samples` (at most 30 s; zero-padded) → `[n_mels, 3000]`,
    /// row-major, normalised like Whisper (`log10`, floor at max − 8, then `(x + 4) / 4`).
    pub fn window(&self, samples: &[f32]) -> Vec<f32> {
        let samples = &samples[..samples.len().min(WINDOW_SAMPLES)];
        let n = WINDOW_SAMPLES;
        let pad = N_FFT / 2;
        // Centre padding by reflection, as torch.stft(center=True, pad_mode="reflect").
        let at = |i: isize| -> f32 {
            let i = if i < 0 {
                -i
            } else if i >= n as isize {
                2 * (n as isize - 1) - i
            } else {
                i
            };
            samples.get(i as usize).copied().unwrap_or(0.0)
        };
        let frames = WINDOW_FRAMES;
        let mut mel = vec![0f32; self.n_mels * frames];
        let mut buf = vec![Complex32::new(0.0, 0.0); N_FFT];
        let mut scratch = vec![Complex32::new(0.0, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = vec![0f32; N_FFT / 2 + 1];
        // Frames past the audio (plus the window's reach) are all zeros: power 0.
        let live_frames = ((samples.len() + pad) / HOP + 1).min(frames);
        for t in 0..live_frames {
            let start = (t * HOP) as isize - pad as isize;
            for (j, c) in buf.iter_mut().enumerate() {
                *c = Complex32::new(at(start + j as isize) * self.window[j], 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (p, c) in power.iter_mut().zip(&buf) {
                *p = c.norm_sqr();
            }
            for (m, (first, w)) in self.rows.iter().enumerate() {
                let e: f32 = w.iter().zip(&power[*first..]).map(|(a, b)| a * b).sum();
                mel[m * frames + t] = e;
            }
        }
        let mut max = f32::NEG_INFINITY;
        for v in mel.iter_mut() {
            *v = v.max(1e-10).log10();
            max = max.max(*v);
        }
        let floor = max - 8.0;
        for v in mel.iter_mut() {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        mel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips_and_is_slaney() {
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(500.0) - 7.5).abs() < 1e-12);
        for f in [0.0, 123.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(f)) - f).abs() < 1e-6);
        }
    }

    #[test]
    fn filter_bank_shape_and_properties() {
        let fb = mel_filters(16_000, 400, 80);
        assert_eq!(fb.len(), 80 * 201);
        assert!(fb.iter().all(|&w| w >= 0.0));
        for m in 0..80 {
            let row = &fb[m * 201..(m + 1) * 201];
            assert!(row.iter().any(|&w| w > 0.0), "row {m} empty");
            // Each row is a single triangle: rises, then falls.
            let peak = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert!(row[..peak].windows(2).all(|w| w[0] <= w[1]));
            assert!(row[peak..].windows(2).all(|w| w[0] >= w[1]));
        }
        // Reference values from librosa's formula as faster-whisper 1.2 computes it in numpy
        // (`FeatureExtractor.get_mel_filters(16000, 400, 80)`): each row's peak, and the sum.
        let reference = [
            (0, 1, 0.024_862_595),
            (1, 2, 0.022_871_772),
            (9, 9, 0.017_917_397),
            (10, 10, 0.019_908_22),
            (25, 24, 0.020_874_01),
            (40, 43, 0.014_735_566),
            (55, 77, 0.007_283_343_5),
            (70, 136, 0.004_571_974_3),
            (79, 192, 0.003_164_711_6),
        ];
        for (m, k, v) in reference {
            let row = &fb[m * 201..(m + 1) * 201];
            let peak = (0..201).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            assert_eq!(peak, k, "row {m} peaks at bin {peak}");
            assert!((row[k] - v).abs() < 1e-7, "row {m}: {} vs {v}", row[k]);
        }
        let total: f32 = fb.iter().sum();
        assert!((total - 1.999_024_2).abs() < 1e-4, "sum {total}");
        // Slaney norm: each triangle has (close to) unit area in Hz.
        for m in 0..80 {
            let area: f32 = fb[m * 201..(m + 1) * 201].iter().sum::<f32>() * 40.0;
            assert!((area - 1.0).abs() < 0.1, "row {m} area {area}");
        }
        // The last bin (8 kHz, Nyquist) is a right edge: weight 0 everywhere.
        assert!((0..80).all(|m| fb[m * 201 + 200] == 0.0));
    }

    #[test]
    fn silence_is_flat_and_tone_lights_its_bin() {
        let ex = MelExtractor::new(80);
        let m = ex.window(&[]);
        assert_eq!(m.len(), 80 * 3000);
        assert!(m.iter().all(|&v| (v - m[0]).abs() < 1e-6));
        let tone: Vec<f32> = (0..16_000)
            .map(|n| (2.0 * std::f32::consts::PI * 1000.0 * n as f32 / 16_000.0).sin())
            .collect();
        let m = ex.window(&tone);
        let frame = 50;
        let best = (0..80)
            .max_by(|&a, &b| m[a * 3000 + frame].total_cmp(&m[b * 3000 + frame]))
            .unwrap();
        let centre_hz = mel_to_hz((best + 1) as f64 * hz_to_mel(8000.0) / 81.0);
        assert!(
            (centre_hz - 1000.0).abs() < 60.0,
            "peak bin {best} at {centre_hz} Hz"
        );
    }
}
