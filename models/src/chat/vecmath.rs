//! Element-wise math of a decode step in AVX-512 where the CPU has it: `exp` for attention's
//! softmax and the MLP's SiLU gate.
//!
//! Why our own: the crate is built for baseline x86-64, so candle's element-wise ops and libm's
//! `expf` run one value at a time in SSE2. In a step for eight conversations of the default model
//! `perf` put 2.4% of the time in `expf` alone (`bench_batch`), about 2.2M calls a step
//! (SiLU over 8 × 8960 values in each of 28 layers, plus the softmaxes); here 16 values take one
//! polynomial, and with both in use `expf` fell to 1.0% (what is left is the prompts', which keep
//! candle's ops).
//!
//! Accuracy: the exponential is Cephes' `expf` (a minimax polynomial on `[-ln 2 / 2, ln 2 / 2]`
//! after the usual range reduction), within 2 ulp of libm's across the range the test sweeps. A step computes
//! each sequence with the same code whatever runs beside it, so its logits still do not
//! depend on its company.

/// True when this CPU runs the AVX-512 paths (checked once).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| std::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i] = silu(gate[i]) * up[i]` (SiLU: `x / (1 + e^-x)`), the gated MLP's activation.
pub(crate) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(
        gate.len() == up.len() && up.len() == out.len(),
        "equal lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: `available()` checked AVX-512F; the lengths are equal (asserted).
        unsafe { x86::silu_mul(gate, up, out) };
        return;
    }
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// `e^x` for 16 values. Inputs below about -87 give 0 or a subnormal, above 88.7 infinity
    /// (clamped so the reduction stays finite), NaN stays NaN.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn exp(x: __m512) -> __m512 {
        // `min`/`max` return their second operand when either is NaN: NaN stays NaN.
        let x = _mm512_min_ps(_mm512_set1_ps(88.8), x);
        let x = _mm512_max_ps(_mm512_set1_ps(-104.0), x);
        // x = n ln2 + r, |r| ≤ ln2 / 2; ln2 in two parts (Cephes' `expf`), the first exact in
        // 9 bits so that n times it is exact.
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(355.0 / 512.0), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        // e^r = 1 + r + r^2 P(r), Cephes' minimax P of degree 5.
        let mut p = _mm512_set1_ps(1.987_569_2e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let p = _mm512_fmadd_ps(
            p,
            _mm512_mul_ps(r, r),
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        // p · 2^n, exponent handled by the hardware (subnormals and overflow included).
        _mm512_scalef_ps(p, n)
    }

    /// Sum of the 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn sum(x: __m512) -> f32 {
        _mm512_reduce_add_ps(x)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len();
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < n {
            let mask: __mmask16 = if n - i >= 16 {
                0xFFFF
            } else {
                (1u16 << (n - i)) - 1
            };
            // SAFETY: the mask keeps every access inside the three slices (equal lengths).
            unsafe {
                let g = _mm512_maskz_loadu_ps(mask, gate.as_ptr().add(i));
                let u = _mm512_maskz_loadu_ps(mask, up.as_ptr().add(i));
                let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
                let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, _mm512_mul_ps(s, u));
            }
            i += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ulp distance between two finite floats of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_is_within_two_ulp_of_libm_and_handles_the_ends() {
        use std::arch::x86_64::*;
        if !available() {
            return;
        }
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let xs: [f32; 16] = std::array::from_fn(|i| x + i as f32 * 0.000_37);
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F checked above; 16 floats each.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), x86::exp(_mm512_loadu_ps(xs.as_ptr()))) };
            for (v, g) in xs.iter().zip(got) {
                worst = worst.max(ulps(g, v.exp()));
            }
            x += 0.0131;
        }
        assert!(worst <= 2, "{worst} ulp off libm");
        let ends = [-1000.0, -104.0, 0.0, 89.0, f32::INFINITY, f32::NEG_INFINITY];
        let mut xs = [0f32; 16];
        xs[..ends.len()].copy_from_slice(&ends);
        let mut got = [0f32; 16];
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(got.as_mut_ptr(), x86::exp(_mm512_loadu_ps(xs.as_ptr()))) };
        assert_eq!(
            got[..ends.len()],
            [0.0, 0.0, 1.0, f32::INFINITY, f32::INFINITY, 0.0]
        );
        xs[0] = f32::NAN;
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(got.as_mut_ptr(), x86::exp(_mm512_loadu_ps(xs.as_ptr()))) };
        assert!(got[0].is_nan(), "NaN in, NaN out");
    }

    #[test]
    fn silu_mul_matches_the_formula_at_every_length() {
        for n in [1, 15, 16, 17, 100] {
            let gate: Vec<f32> = (0..n).map(|i| (i as f32 - 50.0) * 0.37).collect();
            let up: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.01).collect();
            let mut out = vec![f32::NAN; n];
            silu_mul(&gate, &up, &mut out);
            for i in 0..n {
                let want = gate[i] / (1.0 + (-gate[i]).exp()) * up[i];
                assert!(
                    (out[i] - want).abs() <= 4.0 * f32::EPSILON * want.abs().max(1e-30),
                    "n={n} i={i}: {} against {want}",
                    out[i]
                );
            }
        }
    }
}
