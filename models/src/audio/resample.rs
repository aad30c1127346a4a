//! A windowed-sinc resampler (band-limited, for speech; no dependencies).
//!
//! Each output sample is a Blackman-windowed sinc interpolation of the input around its exact
//! source position, with the cut-off at the lower of the two Nyquist frequencies, so downsampling
//! 44.1/48 kHz audio to 16 kHz does not alias.

use std::f64::consts::PI;

/// Half-width of the kernel, in input samples at the cut-off frequency.
const ZERO_CROSSINGS: f64 = 16.0;

/// Resamples mono `input` from `from` Hz to `to` Hz.
///
/// Polyphase: with `g = gcd(from, to)` the source position of output `j` has one of `to / g`
/// fractional phases, so the kernel is tabulated once per phase and each output sample is one
/// dot product.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() || from == 0 || to == 0 {
        return input.to_vec();
    }
    let g = gcd(from as u64, to as u64);
    let up = to as u64 / g; // phases
    let down = from as u64 / g; // input step per `up` outputs
    let ratio = to as f64 / from as f64;
    let cutoff = ratio.min(1.0) * 0.97; // a little below Nyquist
    let half = (ZERO_CROSSINGS / cutoff).ceil() as i64;
    let taps = (2 * half) as usize;
    let phases = up.min(4096) as usize;
    // table[p][k]: weight of input (centre - half + 1 + k) for fractional offset p / up.
    let table: Vec<Vec<f32>> = (0..phases)
        .map(|p| {
            let frac = p as f64 / up as f64;
            let mut row: Vec<f64> = (0..taps)
                .map(|k| {
                    let t = frac - (k as i64 - half + 1) as f64;
                    kernel(t, cutoff, half as f64)
                })
                .collect();
            let norm: f64 = row.iter().sum();
            row.iter_mut().for_each(|w| *w /= norm);
            row.into_iter().map(|w| w as f32).collect()
        })
        .collect();
    let n_out = ((input.len() as u64 * up) / down) as usize;
    let mut out = Vec::with_capacity(n_out);
    for j in 0..n_out as u64 {
        let num = j * down; // source position = num / up
        let centre = (num / up) as i64;
        let phase = ((num % up) as usize * phases) / up as usize;
        let row = &table[phase];
        let first = centre - half + 1;
        let mut acc = 0.0f32;
        if first >= 0 && (first as usize + taps) <= input.len() {
            let s = &input[first as usize..first as usize + taps];
            acc = s.iter().zip(row).map(|(a, b)| a * b).sum();
        } else {
            for (k, w) in row.iter().enumerate() {
                let i = first + k as i64;
                if i >= 0 && (i as usize) < input.len() {
                    acc += w * input[i as usize];
                }
            }
        }
        out.push(acc);
    }
    out
}

fn kernel(t: f64, cutoff: f64, half: f64) -> f64 {
    let w = t / half;
    if w.abs() >= 1.0 {
        return 0.0;
    }
    let x = t * cutoff;
    let sinc = if x.abs() < 1e-9 {
        1.0
    } else {
        (PI * x).sin() / (PI * x)
    };
    sinc * (0.42 + 0.5 * (PI * w).cos() + 0.08 * (2.0 * PI * w).cos())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_and_tone_survive() {
        let from = 48_000;
        let input: Vec<f32> = (0..48_000)
            .map(|n| (2.0 * std::f32::consts::PI * 440.0 * n as f32 / from as f32).sin() * 0.5)
            .collect();
        let out = resample(&input, from, 16_000);
        assert_eq!(out.len(), 16_000);
        for (n, &y) in out.iter().enumerate().skip(100).take(15_800) {
            let want = (2.0 * std::f32::consts::PI * 440.0 * n as f32 / 16_000.0).sin() * 0.5;
            assert!((y - want).abs() < 0.01, "sample {n}: {y} vs {want}");
        }
    }

    #[test]
    fn aliasing_tone_is_removed() {
        // 12 kHz cannot be represented at 16 kHz and must vanish, not fold back to 4 kHz.
        let input: Vec<f32> = (0..48_000)
            .map(|n| (2.0 * std::f32::consts::PI * 12_000.0 * n as f32 / 48_000.0).sin())
            .collect();
        let out = resample(&input, 48_000, 16_000);
        let rms = (out[200..15_800].iter().map(|x| x * x).sum::<f32>() / 15_600.0).sqrt();
        assert!(rms < 0.01, "rms {rms}");
    }
}
