//! Attention for a decode step on the CPU: one new token of each of several sequences, each
//! against its own cached keys and values, in one pass over plain slices.
//!
//! Why not candle's ops: written per sequence as tensor operations (rotary embedding, two
//! transposes, the cache append, two products, a softmax), a step's attention cost about 0.26
//! ms per sequence and layer on the 2-core machine, nearly all of it dispatch and allocation
//! around a few thousand multiply-adds: 54 ms of a 236 ms step for eight sequences of the
//! default model (measured with the decoder's step timings). Here a step's attention is one
//! work list of (sequence, key/value head) items split across candle's worker pool.
//!
//! With AVX-512 (and a head size that is a multiple of 16), an item reads each cached key and
//! value once for all the query heads that share them, and its softmax takes
//! [`super::vecmath`]'s exponential; the portable loops read them once per query head, 128 bits
//! at a time (the crate is built for baseline x86-64). In `bench_batch` (eight conversations,
//! default model, `perf`), attention went from 6.5% of the samples to 4.2%; what remains is
//! mostly reading the caches (f16 since stop 29: 5.7 MB a sequence and step at 200 positions,
//! widened to f32 as they are loaded).
//!
//! Every sequence is computed by the same code whatever runs beside it, so a sequence's logits
//! do not depend on its company (the scheduler's batching relies on this).

use half::f16;
use half::slice::HalfFloatSliceExt;

/// Head counts and size of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    /// Query heads.
    pub(crate) q: usize,
    /// Key/value heads (each shared by `q / kv` query heads).
    pub(crate) kv: usize,
    /// Values per head.
    pub(crate) dim: usize,
}

/// Rotates each of the `heads` heads of `x` (`[heads, dim]`) to one position, with that
/// position's `cos`/`sin` rows (`dim / 2` each): NeoX halves (`neox`) or interleaved pairs, the
/// same arithmetic as candle-nn's `rope` and `rope_i`.
pub(crate) fn rope(x: &mut [f32], dim: usize, cos: &[f32], sin: &[f32], neox: bool) {
    let half = dim / 2;
    for head in x.chunks_exact_mut(dim) {
        for i in 0..half {
            let (a, b) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x1, x2) = (head[a], head[b]);
            head[a] = x1 * cos[i] - x2 * sin[i];
            head[b] = x1 * sin[i] + x2 * cos[i];
        }
    }
}

/// How a cache stores its values: f16 (what the decoder serves with) or f32 (tests that
/// compare with f32 references); both are widened to f32 as they are read.
pub(crate) trait Element: Copy + Send + Sync + candle_core::WithDType {
    /// `src` as f32 in `dst`.
    fn widen(src: &[Self], dst: &mut Vec<f32>);
    /// 16 values from `p` as f32.
    ///
    /// # Safety
    /// AVX-512F is available and 16 values from `p` are readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl Element for f16 {
    fn widen(src: &[f16], dst: &mut Vec<f32>) {
        // F16C or NEON where the CPU has them, through `half`.
        dst.resize(src.len(), 0.0);
        src.convert_to_f32_slice(dst);
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    unsafe fn load16(p: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

impl Element for f32 {
    fn widen(src: &[f32], dst: &mut Vec<f32>) {
        dst.clear();
        dst.extend_from_slice(src);
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

/// One sequence's cached keys and values, `[kv heads, cap, dim]` each, of which the first `len`
/// positions (the new token's included) are filled.
pub(crate) struct Cached<'a, E> {
    pub(crate) k: &'a [E],
    pub(crate) v: &'a [E],
    pub(crate) cap: usize,
    pub(crate) len: usize,
}

/// `out[s]` (`[q heads, dim]`) = softmax(`q[s]` · keys × `scale`) · values of sequence `s`, for
/// every sequence. `q` holds the rotated queries, `[sequences, q heads, dim]`.
pub(crate) fn attend<E: Element>(
    q: &[f32],
    seqs: &[Cached<'_, E>],
    h: Heads,
    scale: f32,
    out: &mut [f32],
) {
    let row = h.q * h.dim;
    assert!(
        h.kv > 0 && h.q.is_multiple_of(h.kv),
        "query heads group over kv heads"
    );
    assert_eq!(q.len(), seqs.len() * row, "one query row per sequence");
    assert_eq!(out.len(), q.len(), "one output row per sequence");
    for s in seqs {
        assert!(s.len > 0 && s.len <= s.cap, "a cache holds the new token");
        assert!(s.k.len() >= h.kv * s.cap * h.dim && s.v.len() >= h.kv * s.cap * h.dim);
    }
    let group = h.q / h.kv;
    let items = seqs.len() * h.kv;
    let out_addr = out.as_mut_ptr() as usize;
    let simd = super::vecmath::available() && h.dim.is_multiple_of(16);
    candle_core::utils::barrier_pool().execute_chunked(items, |range| {
        let mut scores = Vec::new();
        let mut acc = vec![0f32; h.dim];
        let (mut wide_k, mut wide_v) = (Vec::new(), Vec::new());
        for item in range {
            let (s, g) = (item / h.kv, item % h.kv);
            let c = &seqs[s];
            let keys = &c.k[g * c.cap * h.dim..][..c.len * h.dim];
            let values = &c.v[g * c.cap * h.dim..][..c.len * h.dim];
            // This item's query heads and their output rows (adjacent: heads `g * group..`).
            let qs = &q[s * row + g * group * h.dim..][..group * h.dim];
            // SAFETY: `out` has `seqs.len() * row` elements (asserted above) and each
            // (sequence, key/value head) item writes only its own query heads' rows.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    (out_addr as *mut f32).add(s * row + g * group * h.dim),
                    group * h.dim,
                )
            };
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: `vecmath::available()` checked AVX-512F; `dim` is a multiple of 16,
                // `qs`/`dst` hold `group` heads and `keys`/`values` `len` positions.
                unsafe { x86::item(qs, keys, values, h.dim, scale, &mut scores, dst) };
                continue;
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = simd; // the vector path is x86's
            // Widened once for all the query heads that share them.
            E::widen(keys, &mut wide_k);
            E::widen(values, &mut wide_v);
            let (keys, values) = (&wide_k[..], &wide_v[..]);
            for (qh, dst) in qs.chunks_exact(h.dim).zip(dst.chunks_exact_mut(h.dim)) {
                scores.clear();
                scores.extend(keys.chunks_exact(h.dim).map(|k| dot(qh, k) * scale));
                softmax(&mut scores);
                acc.fill(0.0);
                for (p, v) in scores.iter().zip(values.chunks_exact(h.dim)) {
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a += p * x;
                    }
                }
                dst.copy_from_slice(&acc);
            }
        }
    });
}

/// The AVX-512 form of one (sequence, key/value head) item: the query heads that share the
/// head's keys and values read each key and each value once, in registers, rather than once per
/// query head (`dim` values a position: from L2 at best for a few hundred positions).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::vecmath::x86::{exp, sum};
    use super::Element;
    use std::arch::x86_64::*;

    /// Query heads per pass: their sums stay in registers.
    const HEADS: usize = 8;

    /// `dst` (`[heads, dim]`) = softmax(`qs` · keys × `scale`) · values for each query head of
    /// `qs` (`[heads, dim]`); `keys`, `values`: `[len, dim]`, `dim` a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn item<E: Element>(
        qs: &[f32],
        keys: &[E],
        values: &[E],
        dim: usize,
        scale: f32,
        scores: &mut Vec<f32>,
        dst: &mut [f32],
    ) {
        let len = keys.len() / dim;
        let heads = qs.len() / dim;
        scores.clear();
        scores.resize(HEADS * len, 0.0);
        let mut h0 = 0;
        while h0 < heads {
            let n = HEADS.min(heads - h0);
            // SAFETY (the calls): `n` heads from `h0` are inside `qs`/`dst`, `scores` holds
            // `HEADS * len`, and the caller's contract covers the rest.
            unsafe {
                match n {
                    8 => pass::<E, 8>(qs, keys, values, dim, scale, scores, dst, h0),
                    7 => pass::<E, 7>(qs, keys, values, dim, scale, scores, dst, h0),
                    6 => pass::<E, 6>(qs, keys, values, dim, scale, scores, dst, h0),
                    5 => pass::<E, 5>(qs, keys, values, dim, scale, scores, dst, h0),
                    4 => pass::<E, 4>(qs, keys, values, dim, scale, scores, dst, h0),
                    3 => pass::<E, 3>(qs, keys, values, dim, scale, scores, dst, h0),
                    2 => pass::<E, 2>(qs, keys, values, dim, scale, scores, dst, h0),
                    _ => pass::<E, 1>(qs, keys, values, dim, scale, scores, dst, h0),
                }
            }
            h0 += n;
        }
    }

    /// Heads `h0..h0 + G` of [`item`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn pass<E: Element, const G: usize>(
        qs: &[f32],
        keys: &[E],
        values: &[E],
        dim: usize,
        scale: f32,
        scores: &mut [f32],
        dst: &mut [f32],
        h0: usize,
    ) {
        let len = keys.len() / dim;
        assert!(qs.len() >= (h0 + G) * dim && dst.len() >= (h0 + G) * dim);
        assert!(values.len() >= len * dim && scores.len() >= G * len);
        let q = qs[h0 * dim..].as_ptr();
        let (k, v, sc) = (keys.as_ptr(), values.as_ptr(), scores.as_mut_ptr());
        // SAFETY (every pointer access below): offsets stay under the lengths asserted above.
        unsafe {
            // Scores: each key once, against every head of the pass.
            for t in 0..len {
                let mut acc = [_mm512_setzero_ps(); G];
                for c in (0..dim).step_by(16) {
                    let kv = E::load16(k.add(t * dim + c));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(j * dim + c)), kv, *a);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    *sc.add(j * len + t) = sum(*a) * scale;
                }
            }
            // Softmax numerators, each head's row in place; the division comes last.
            let mut inv = [0f32; G];
            for (j, inv) in inv.iter_mut().enumerate() {
                let row = sc.add(j * len);
                let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
                let mut t = 0;
                while t < len {
                    let m = tail_mask(len - t);
                    let x = _mm512_mask_loadu_ps(max, m, row.add(t));
                    max = _mm512_max_ps(max, x);
                    t += 16;
                }
                let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
                let mut total = _mm512_setzero_ps();
                let mut t = 0;
                while t < len {
                    let m = tail_mask(len - t);
                    let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, row.add(t)), max));
                    _mm512_mask_storeu_ps(row.add(t), m, e);
                    total = _mm512_add_ps(total, _mm512_maskz_mov_ps(m, e));
                    t += 16;
                }
                *inv = 1.0 / sum(total);
            }
            // Outputs: each value once, into every head of the pass, 16 of `dim` at a time.
            let out = dst[h0 * dim..].as_mut_ptr();
            for c in (0..dim).step_by(16) {
                let mut acc = [_mm512_setzero_ps(); G];
                for t in 0..len {
                    let vv = E::load16(v.add(t * dim + c));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*sc.add(j * len + t)), vv, *a);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(
                        out.add(j * dim + c),
                        _mm512_mul_ps(*a, _mm512_set1_ps(inv[j])),
                    );
                }
            }
        }
    }

    /// The lanes of a 16-value chunk that lie before the end, `left` values away.
    #[inline]
    fn tail_mask(left: usize) -> __mmask16 {
        if left >= 16 {
            0xFFFF
        } else {
            (1u16 << left) - 1
        }
    }
}

/// Dot product with eight partial sums, so the compiler keeps them in vector lanes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// In-place softmax: `exp(x - max) / sum`.
fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn rope_matches_candle_nn_for_both_layouts() -> candle_core::Result<()> {
        let (heads, dim, pos) = (3, 8, 5);
        let x = values(heads * dim, 1);
        let cos_all = values(10 * dim / 2, 2);
        let sin_all = values(10 * dim / 2, 3);
        let (cos, sin) = (
            &cos_all[pos * dim / 2..(pos + 1) * dim / 2],
            &sin_all[pos * dim / 2..(pos + 1) * dim / 2],
        );
        let dev = Device::Cpu;
        let t = Tensor::from_slice(&x, (1, heads, 1, dim), &dev)?;
        let (c, s) = (
            Tensor::from_slice(cos, (1, dim / 2), &dev)?,
            Tensor::from_slice(sin, (1, dim / 2), &dev)?,
        );
        for neox in [true, false] {
            let want = if neox {
                candle_nn::rotary_emb::rope(&t, &c, &s)?
            } else {
                candle_nn::rotary_emb::rope_i(&t, &c, &s)?
            };
            let mut got = x.clone();
            rope(&mut got, dim, cos, sin, neox);
            assert_eq!(got, want.flatten_all()?.to_vec1::<f32>()?, "neox={neox}");
        }
        Ok(())
    }

    /// Every head shape (query heads grouped over key/value heads, in one pass of the vector
    /// path or several, and a head size it does not take), lengths around the 16-lane chunks,
    /// caches of f16 (served) and f32.
    #[test]
    fn attention_matches_the_tensor_formula_per_sequence_and_ignores_its_company()
    -> candle_core::Result<()> {
        matches_formula(f16::from_f32)?;
        matches_formula(|x| x)
    }

    fn matches_formula<E: Element>(from: fn(f32) -> E) -> candle_core::Result<()> {
        for (hq, hkv, dim) in [(4, 2, 16), (20, 2, 32), (3, 3, 12)] {
            let h = Heads {
                q: hq,
                kv: hkv,
                dim,
            };
            let cap = 40;
            let lens = [1usize, 7, 17, 40];
            let dev = Device::Cpu;
            let halves = |n, seed| -> Vec<E> { values(n, seed).into_iter().map(from).collect() };
            let caches: Vec<(Vec<E>, Vec<E>)> = (0..lens.len() as u32)
                .map(|s| {
                    (
                        halves(h.kv * cap * h.dim, 10 + s),
                        halves(h.kv * cap * h.dim, 20 + s),
                    )
                })
                .collect();
            let q = values(lens.len() * h.q * h.dim, 30);
            let scale = 1.0 / (h.dim as f32).sqrt();
            let seqs: Vec<Cached<'_, E>> = caches
                .iter()
                .zip(lens)
                .map(|((k, v), len)| Cached { k, v, cap, len })
                .collect();
            let mut together = vec![0f32; q.len()];
            attend(&q, &seqs, h, scale, &mut together);
            let row = h.q * h.dim;
            for (s, c) in seqs.iter().enumerate() {
                // Alone: the same numbers exactly.
                let mut alone = vec![0f32; row];
                attend(
                    &q[s * row..(s + 1) * row],
                    std::slice::from_ref(c),
                    h,
                    scale,
                    &mut alone,
                );
                assert_eq!(
                    alone,
                    together[s * row..(s + 1) * row],
                    "{h:?} sequence {s}"
                );
                // Against softmax(q k^T * scale) v with candle's f32 tensors of the same keys
                // and values (query heads grouped).
                let wide = |x: &[E]| -> Vec<f32> { x.iter().map(|x| x.to_f64() as f32).collect() };
                let k =
                    Tensor::from_vec(wide(c.k), (h.kv, cap, h.dim), &dev)?.narrow(1, 0, c.len)?;
                let v =
                    Tensor::from_vec(wide(c.v), (h.kv, cap, h.dim), &dev)?.narrow(1, 0, c.len)?;
                let qs = Tensor::from_slice(
                    &q[s * row..(s + 1) * row],
                    (h.kv, h.q / h.kv, h.dim),
                    &dev,
                )?;
                let att = (qs.matmul(&k.t()?.contiguous()?)? * f64::from(scale))?;
                let att = candle_nn::ops::softmax_last_dim(&att)?;
                let want: Vec<f32> = att.matmul(&v.contiguous()?)?.flatten_all()?.to_vec1()?;
                let got = &together[s * row..(s + 1) * row];
                let worst = want
                    .iter()
                    .zip(got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-5, "{h:?} sequence {s}: off by {worst}");
            }
        }
        Ok(())
    }
}
