//! A windowed-sinc resampler (band-limited, for speech; no dependencies).
//!
//! Each output sample is a Blackman-windowed sinc interpolation of the input around its exact
//! source position, with the cut-off at the lower of the two Nyquist frequencies, so downsampling
//! 44.1/48 kHz audio to 16 kHz does not alias.
//!
//! [`Resampler`] streams: input is pushed packet by packet and only the kernel's window of it is
//! kept, so a long stream at 192 kHz never sits in memory at the source rate, and it stops at a
//! caller-given number of output samples (the decode cap) without computing or reserving more.

use std::f64::consts::PI;

/// Half-width of the kernel, in input samples at the cut-off frequency.
const ZERO_CROSSINGS: f64 = 16.0;

/// Resamples mono `input` from `from` Hz to `to` Hz, all of it (see [`Resampler`] for the
/// bounded, streaming form the decoders use).
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    let mut r = Resampler::new(from, to, usize::MAX);
    let mut out = Vec::with_capacity(r.outputs_for(input.len() as u64) as usize);
    r.push(input, &mut out);
    r.finish(&mut out);
    out
}

/// A streaming polyphase resampler with an output cap.
///
/// Polyphase: with `g = gcd(from, to)` the source position of output `j` is `j * down / up`
/// (`up = to / g`, `down = from / g`), which has one of `up` fractional phases, so the kernel
/// is tabulated once per phase (at most 4096) and each output sample is one dot product.
/// Output `j` is computed as soon as the input reaches its kernel's right edge; the input before
/// the next output's left edge is dropped. The result is the same as resampling the whole
/// input at once.
pub struct Resampler {
    /// `from == to` (or a zero rate): samples are copied, up to the cap.
    identity: bool,
    up: u64,
    down: u64,
    half: i64,
    taps: usize,
    phases: usize,
    /// `phases * taps` weights; row `p` weighs inputs `centre - half + 1 ..= centre + half` for
    /// the fractional offset `p / phases`.
    table: Vec<f32>,
    /// The input still needed; `window[0]` is input sample number `offset`.
    window: Vec<f32>,
    offset: u64,
    total_in: u64,
    next_out: u64,
    max_out: u64,
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz that produces at most `max_out` samples.
    pub fn new(from: u32, to: u32, max_out: usize) -> Self {
        let max_out = max_out as u64;
        if from == to || from == 0 || to == 0 {
            return Self {
                identity: true,
                up: 1,
                down: 1,
                half: 0,
                taps: 0,
                phases: 0,
                table: Vec::new(),
                window: Vec::new(),
                offset: 0,
                total_in: 0,
                next_out: 0,
                max_out,
            };
        }
        let g = gcd(from as u64, to as u64);
        let up = to as u64 / g; // phases
        let down = from as u64 / g; // input step per `up` outputs
        let ratio = to as f64 / from as f64;
        let cutoff = ratio.min(1.0) * 0.97; // a little below Nyquist
        let half = (ZERO_CROSSINGS / cutoff).ceil() as i64;
        let taps = (2 * half) as usize;
        let phases = up.min(4096) as usize;
        let mut table = Vec::with_capacity(phases * taps);
        let mut row = vec![0f64; taps];
        for p in 0..phases {
            let frac = p as f64 / up as f64;
            for (k, w) in row.iter_mut().enumerate() {
                let t = frac - (k as i64 - half + 1) as f64;
                *w = kernel(t, cutoff, half as f64);
            }
            let norm: f64 = row.iter().sum();
            table.extend(row.iter().map(|w| (w / norm) as f32));
        }
        Self {
            identity: false,
            up,
            down,
            half,
            taps,
            phases,
            table,
            window: Vec::new(),
            offset: 0,
            total_in: 0,
            next_out: 0,
            max_out,
        }
    }

    /// How many output samples `n_in` input samples make (uncapped).
    pub fn outputs_for(&self, n_in: u64) -> u64 {
        n_in * self.up / self.down
    }

    /// Output samples produced so far.
    pub fn produced(&self) -> usize {
        self.next_out as usize
    }

    /// True once the cap is reached: more input changes nothing.
    pub fn is_full(&self) -> bool {
        self.next_out >= self.max_out
    }

    /// True when the input pushed so far holds more audio than the cap lets out.
    pub fn truncated(&self) -> bool {
        self.outputs_for(self.total_in) > self.max_out
    }

    /// Feeds `input` and appends to `out` every output sample it completes, up to the cap.
    /// `out` grows by exactly the samples appended (never past the cap).
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.identity {
            let room =
                usize::try_from(self.max_out.saturating_sub(self.next_out)).unwrap_or(usize::MAX);
            let n = input.len().min(room);
            super::reserve_bounded(out, n, out.len().saturating_add(room));
            out.extend_from_slice(&input[..n]);
            self.next_out += n as u64;
            self.total_in += input.len() as u64;
            return;
        }
        if self.is_full() {
            self.total_in += input.len() as u64;
            return;
        }
        self.window.extend_from_slice(input);
        self.total_in += input.len() as u64;
        // Output j is complete when its kernel's last input, centre + half, has arrived.
        let last_in = self.total_in as i64 - 1;
        let mut end = self.next_out;
        let limit = self.max_out.min(self.outputs_for(self.total_in));
        // centre(j) = j * down / up <= last_in - half  <=>  j <= ((last_in - half + 1) * up - 1) / down
        let reach = last_in - self.half + 1;
        if reach > 0 {
            end =
                end.max((((reach as u64) * self.up).saturating_sub(1) / self.down + 1).min(limit));
        }
        self.emit_until(end, out);
        // Drop the input no later output needs.
        let keep_from = self.left_edge(self.next_out).max(0) as u64;
        if keep_from > self.offset {
            let drop = ((keep_from - self.offset) as usize).min(self.window.len());
            self.window.drain(..drop);
            self.offset += drop as u64;
        }
    }

    /// Ends the stream: the outputs whose kernel runs past the input's end are computed with
    /// zeros there, up to the cap.
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        if self.identity {
            return;
        }
        let end = self.max_out.min(self.outputs_for(self.total_in));
        self.emit_until(end, out);
    }

    fn left_edge(&self, j: u64) -> i64 {
        ((j * self.down) / self.up) as i64 - self.half + 1
    }

    fn emit_until(&mut self, end: u64, out: &mut Vec<f32>) {
        if end <= self.next_out {
            return;
        }
        let n = (end - self.next_out) as usize;
        let room = usize::try_from(self.max_out - self.next_out).unwrap_or(usize::MAX);
        super::reserve_bounded(out, n, out.len().saturating_add(room));
        for j in self.next_out..end {
            let num = j * self.down; // source position = num / up
            let phase = ((num % self.up) as usize * self.phases) / self.up as usize;
            let row = &self.table[phase * self.taps..(phase + 1) * self.taps];
            let first = self.left_edge(j);
            // Inputs before the start and after the end are zeros.
            let lo = first.max(0);
            let hi = (first + self.taps as i64).min(self.total_in as i64);
            let acc = if hi > lo {
                let s = &self.window
                    [(lo as u64 - self.offset) as usize..(hi as u64 - self.offset) as usize];
                let w = &row[(lo - first) as usize..];
                s.iter().zip(w).map(|(a, b)| a * b).sum()
            } else {
                0.0
            };
            // A windowed sinc overshoots next to full-scale steps (Gibbs ringing): keep the
            // [-1, 1] range `Pcm` promises (an 8-bit WAV reached 1.14 under the fuzzer).
            out.push(acc.clamp(-1.0, 1.0));
        }
        self.next_out = end;
    }
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

    #[test]
    fn full_scale_steps_stay_in_range() {
        // A square wave at full scale rings past ±1 through any sinc filter; the output does not.
        let input: Vec<f32> = (0..22_050)
            .map(|n| if (n / 50) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let out = resample(&input, 22_050, 16_000);
        assert!(!out.is_empty());
        assert!(out.iter().all(|s| (-1.0..=1.0).contains(s)));
    }
}
