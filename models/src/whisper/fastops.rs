//! In-place CPU kernels for the encoder's element-wise work: GELU (erf form) and the softmax of
//! attention rows.
//!
//! candle computes both with a libm call per element (`erff`, `expf`), which on the 30 s window
//! (6 layers × 1500 × 2048 GELUs, 6 × 8 × 1500² exponentials) costs about as much as a third of
//! the encoder's matrix products. Here the exponential is a range reduction plus a polynomial
//! that the compiler vectorizes (AVX2+FMA when the CPU has it, checked at run time), and the
//! work is split across rayon's threads. Both write into the tensor they are given, so no new
//! buffer is allocated. Other devices and dtypes fall back to candle's ops.

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Tensor};
use rayon::prelude::*;

/// `e^x` for f32, relative error below 2e-7 on [-87, 88]; 0 below, +inf above.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // x = n·ln2 + r, |r| ≤ ln2/2
    // Ties-to-even rounding is one vector instruction (`round` is a libm call).
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = n.mul_add(-0.693_145_75, x);
    let r = n.mul_add(-1.428_606_8e-6, r);
    // e^r by its Taylor polynomial (degree 6 is enough for |r| ≤ 0.347).
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^n through the exponent bits.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * scale;
    if x <= -87.3 { 0.0 } else { y }
}

/// `erf(x)` (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7).
#[inline(always)]
fn erf_approx(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / a.mul_add(0.327_591_1, 1.0);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_approx(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu_slice(xs: &mut [f32]) {
    for x in xs {
        let v = *x;
        *x = 0.5 * v * (1.0 + erf_approx(v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Lanes of the running max and sum: independent accumulators let the compiler vectorize the
/// reductions (a single float accumulator must add in order).
const LANES: usize = 8;

#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut max = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..LANES {
            m[i] = m[i].max(c[i]);
        }
    }
    max = m.iter().copied().fold(max, f32::max);
    let mut s = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let e = exp_approx(c[i] - max);
            c[i] = e;
            s[i] += e;
        }
    }
    let mut sum: f32 = s.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_approx(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// The same loops compiled for AVX2+FMA; the caller checks the CPU first.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu(xs: &mut [f32]) {
        super::gelu_slice(xs)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_rows(xs: &mut [f32], width: usize) {
        for row in xs.chunks_exact_mut(width) {
            super::softmax_row(row)
        }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn gelu_chunk(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { avx2::gelu(xs) };
    }
    gelu_slice(xs)
}

fn softmax_chunk(xs: &mut [f32], width: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { avx2::softmax_rows(xs, width) };
    }
    for row in xs.chunks_exact_mut(width) {
        softmax_row(row)
    }
}

/// Elements per rayon task for element-wise work.
const CHUNK: usize = 1 << 14;

/// The contiguous f32 data a layout covers, or None (then the caller uses candle's op).
fn contiguous_f32<'a>(s: &'a mut CpuStorage, l: &Layout) -> Option<&'a mut [f32]> {
    let (start, end) = l.contiguous_offsets()?;
    match s {
        CpuStorage::F32(v) => Some(&mut v[start..end]),
        _ => None,
    }
}

struct Gelu;

impl InplaceOp1 for Gelu {
    fn name(&self) -> &'static str {
        "sandra-gelu-erf"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let xs =
            contiguous_f32(s, l).ok_or_else(|| candle_core::Error::Msg("gelu: layout".into()))?;
        xs.par_chunks_mut(CHUNK).for_each(gelu_chunk);
        Ok(())
    }
}

struct SoftmaxLastDim(usize);

impl InplaceOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "sandra-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let w = self.0;
        let xs = contiguous_f32(s, l)
            .ok_or_else(|| candle_core::Error::Msg("softmax: layout".into()))?;
        let rows_per_task = (CHUNK / w).max(1);
        xs.par_chunks_mut(rows_per_task * w)
            .for_each(|c| softmax_chunk(c, w));
        Ok(())
    }
}

/// Whether `t` can be rewritten in place by these kernels: a contiguous f32 CPU tensor. Callers
/// pass only tensors that the previous op has just produced, so no other tensor shares them.
fn in_place_ok(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// GELU (erf form) of a freshly computed tensor, in place on the CPU.
pub(crate) fn gelu_erf(t: Tensor) -> Result<Tensor> {
    if !in_place_ok(&t) {
        return t.gelu_erf();
    }
    t.inplace_op1(&Gelu)?;
    Ok(t)
}

/// Softmax over the last dimension of a freshly computed tensor, in place on the CPU.
pub(crate) fn softmax_last_dim(t: Tensor) -> Result<Tensor> {
    if !in_place_ok(&t) {
        return candle_nn::ops::softmax_last_dim(&t);
    }
    let w = t.dim(candle_core::D::Minus1)?;
    t.inplace_op1(&SoftmaxLastDim(w))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_and_erf_match_libm() {
        for i in -8000..8000 {
            let x = i as f32 / 100.0;
            let (a, b) = (exp_approx(x), x.exp());
            assert!(((a - b) / b).abs() < 1e-6, "exp({x}) = {a}, libm {b}");
        }
        assert_eq!(exp_approx(-200.0), 0.0);
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn gelu_matches_candle_over_its_range() -> Result<()> {
        let xs: Vec<f32> = (-1000..1000).map(|i| i as f32 / 100.0).collect();
        let x = Tensor::new(xs.as_slice(), &Device::Cpu)?;
        let want = x.gelu_erf()?.to_vec1::<f32>()?;
        let got = gelu_erf(x.copy()?)?.to_vec1::<f32>()?;
        for ((w, g), x) in want.iter().zip(&got).zip(&xs) {
            assert!((w - g).abs() < 1e-6, "gelu({x}) = {g}, candle {w}");
        }
        Ok(())
    }

    #[test]
    fn kernels_match_candle_ops() -> Result<()> {
        let x = (Tensor::randn(0f32, 3.0, (3, 70, 333), &Device::Cpu)?).contiguous()?;
        let want = x.gelu_erf()?;
        let got = gelu_erf(x.copy()?)?;
        let d = (want - &got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "gelu differs by {d}");

        let mut s = x.copy()?;
        // A masked row: -inf entries must come out as exact zeros.
        s = s.slice_assign(
            &[0..1, 0..1, 0..3],
            &Tensor::full(f32::NEG_INFINITY, (1, 1, 3), &Device::Cpu)?,
        )?;
        let want = candle_nn::ops::softmax_last_dim(&s)?;
        let got = softmax_last_dim(s.copy()?)?;
        let d = (&want - &got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "softmax differs by {d}");
        let first = got.get(0)?.get(0)?.to_vec1::<f32>()?;
        assert_eq!(&first[..3], &[0.0, 0.0, 0.0]);
        Ok(())
    }
}
