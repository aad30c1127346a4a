//! The decode-step kernels of [`super`] for CPUs with AVX2 and FMA but no AVX-512 VNNI (AMD
//! Zen 1–3, Intel Haswell to Comet Lake: many of the machines operators run Sandra on).
//!
//! Without them a batched step on such a CPU took candle's block dot products for Q6_K
//! matrices (the output projection and half of the FFN-down and value ones in Q4_K_M files),
//! which unpack every weight block again for each row: eight conversations cost about eight
//! single steps there. Here, as in the VNNI kernels, each weight block is loaded and unpacked
//! once per step and multiplied against every row, with AVX2's `maddubs` (unsigned 6- or 4-bit
//! weights times signed 8-bit activations, pairs summed to 16 bits, which cannot saturate:
//! |2 · 63 · 128| < 2¹⁵) and `madd` by the sub-block scales.
//!
//! The activations are candle's own Q8_K blocks (`BlockQ8K::from_float`), in natural order,
//! so every block sum is the exact integer candle's kernels compute; every row goes through
//! the same instructions whatever the rows beside it, so a sequence's logits do not depend on
//! its company.

use std::arch::x86_64::*;

// The VNNI kernels' helpers: the f16 scale reader and the weight prefetch (rows of a matrix
// follow one another in memory, and a decode step reads each weight once, from memory).
use super::x86::{f16_at, prefetch_ahead};
use super::{Act, EIGHT, Eights, GROUP, Q4K_BYTES, Q6K_BYTES};

/// Weight rows per kernel call (as the VNNI kernels'), reduced one by one at the end.
pub(super) const CHUNK: usize = 16;
const _: () = assert!(
    CHUNK.is_multiple_of(EIGHT),
    "a chunk of Q4kByEights is whole groups"
);

/// The sum of the 8 lanes, in one fixed order.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// One block of 256 values as Q8_K, bit for bit as candle's `BlockQ8K::from_float` (the AVX2
/// twin of the VNNI module's `q8k_block`, which documents the rounding): writes the quants and
/// the 16 sums of 16, returns the scale `d`. candle's scalar loop (a libm `roundf` per value)
/// cost a decode step of eight conversations about 7% of its time on this kind of CPU.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn q8k_block(xs: &[f32], qs: &mut [i8; 256], bsums: &mut [i16; 16]) -> f32 {
    assert_eq!(xs.len(), 256, "one block");
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let mut v = [_mm256_setzero_ps(); 32];
    let mut amax = _mm256_setzero_ps();
    for (c, v) in v.iter_mut().enumerate() {
        // SAFETY: `xs` has 256 floats; chunk `c` reads 8 at 8c.
        *v = unsafe { _mm256_loadu_ps(xs.as_ptr().add(8 * c)) };
        amax = _mm256_max_ps(amax, _mm256_and_ps(*v, magnitude));
    }
    let m = _mm_max_ps(
        _mm256_castps256_ps128(amax),
        _mm256_extractf128_ps::<1>(amax),
    );
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    if amax == 0.0 {
        qs.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    // The first value whose magnitude is the largest, with its sign.
    let target = _mm256_set1_ps(amax);
    let mut max = amax;
    for (c, v) in v.iter().enumerate() {
        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
            _mm256_and_ps(*v, magnitude),
            target,
        ));
        if hit != 0 {
            max = xs[8 * c + hit.trailing_zeros() as usize];
            break;
        }
    }
    let iscale = -127f32 / max;
    let scale = _mm256_set1_ps(iscale);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    let ints = |v: __m256| {
        let v = _mm256_mul_ps(scale, v);
        // Halves away from zero: truncate, then one step away from zero when the (exact)
        // remainder is at least one half.
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let rem = _mm256_and_ps(_mm256_sub_ps(v, t), magnitude);
        let away = _mm256_cmp_ps::<_CMP_GE_OQ>(rem, half);
        let step = _mm256_or_ps(one, _mm256_and_ps(v, sign));
        let r = _mm256_add_ps(t, _mm256_and_ps(away, step));
        _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
    };
    for (c, sum) in bsums.iter_mut().enumerate() {
        let (a, b) = (ints(v[2 * c]), ints(v[2 * c + 1]));
        let s = _mm256_add_epi32(a, b);
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        *sum = _mm_cvtsi128_si32(s) as i16;
        // 16-bit a0..a3 b0..b3 | a4..a7 b4..b7, then the middle quarters swapped: in order.
        let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
        let bytes = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
        // SAFETY: `qs` has 256 bytes; chunk `c` writes 16 at 16c.
        unsafe { _mm_storeu_si128(qs.as_mut_ptr().add(16 * c).cast(), bytes) };
    }
    1.0 / iscale
}

/// Q6_K: `out[r * stride + i] = w[i] · acts[r]` for the `nw` (≤ [`CHUNK`]) weight rows of `w`
/// and the `rows` (≤ GROUP) activation rows of `acts` (natural order), `kb` blocks each.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` holds `nw * kb` blocks, `acts` `rows * kb`, and `out`
/// is writable at those `rows × nw` places.
pub(super) unsafe fn q6k_rows(
    w: &[u8],
    nw: usize,
    acts: &[Act],
    kb: usize,
    rows: usize,
    out: *mut f32,
    stride: usize,
) {
    assert!(nw <= CHUNK && rows <= GROUP && w.len() >= nw * kb * Q6K_BYTES);
    assert!(acts.len() >= rows * kb);
    // SAFETY (each arm): the caller's contract, with the lengths asserted above.
    unsafe { by_rows!(q6k, rows, w, nw, acts, kb, out, stride) }
}

/// Q4_K: as [`q6k_rows`].
///
/// # Safety
/// As [`q6k_rows`], with Q4_K blocks.
pub(super) unsafe fn q4k_rows(
    w: &[u8],
    nw: usize,
    acts: &[Act],
    kb: usize,
    rows: usize,
    out: *mut f32,
    stride: usize,
) {
    assert!(nw <= CHUNK && rows <= GROUP && w.len() >= nw * kb * Q4K_BYTES);
    assert!(acts.len() >= rows * kb);
    // SAFETY (each arm): the caller's contract, with the lengths asserted above.
    unsafe { by_rows!(q4k, rows, w, nw, acts, kb, out, stride) }
}

/// Calls `$kernel::<R>` for the row count: a constant count lets the compiler keep every
/// row's sums in registers and unroll the loops over rows (with a count known only at run time
/// one row cost about 1.6× candle's block dot product). Each row still runs the same
/// instructions whatever `R` is.
macro_rules! by_rows {
    ($kernel:ident, $rows:expr, $($arg:expr),*) => {
        match $rows {
            1 => $kernel::<1>($($arg),*),
            2 => $kernel::<2>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            4 => $kernel::<4>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            6 => $kernel::<6>($($arg),*),
            7 => $kernel::<7>($($arg),*),
            _ => $kernel::<8>($($arg),*),
        }
    };
}
use by_rows;

const _: () = assert!(GROUP == 8, "by_rows! covers 1..=8 rows");

/// [`q6k_rows`] for `R` rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k<const R: usize>(
    w: &[u8],
    nw: usize,
    acts: &[Act],
    kb: usize,
    out: *mut f32,
    stride: usize,
) {
    let nib = _mm256_set1_epi8(0x0F);
    let two = _mm256_set1_epi8(0x03);
    // Spreads the 16-bit scale pair held in one 32-bit lane over the two 128-bit lanes: words
    // 0..8 take the pair's first, 8..16 its second.
    let spread = _mm256_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
        2, 3,
    );
    let rows: [&[Act]; R] = std::array::from_fn(|r| &acts[r * kb..(r + 1) * kb]);
    for i in 0..nw {
        let w = &w[i * kb * Q6K_BYTES..(i + 1) * kb * Q6K_BYTES];
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, blk) in w.chunks_exact(Q6K_BYTES).enumerate() {
            prefetch_ahead(blk);
            let d = f16_at(blk, 208);
            // SAFETY: 16 scale bytes at 192.
            let sc = unsafe { _mm_loadu_si128(blk.as_ptr().add(192).cast()) };
            let sc_all = _mm256_cvtepi8_epi16(sc);
            let mut sums = [_mm256_setzero_si256(); R];
            for h in 0..2 {
                // SAFETY: 64 bytes of low nibbles at 64h, 32 bytes of high pairs at 128 + 32h.
                let (ql0, ql1, qh) = unsafe {
                    (
                        _mm256_loadu_si256(blk.as_ptr().add(64 * h).cast()),
                        _mm256_loadu_si256(blk.as_ptr().add(64 * h + 32).cast()),
                        _mm256_loadu_si256(blk.as_ptr().add(128 + 32 * h).cast()),
                    )
                };
                // The half's 128 values as four vectors of 32 (0..63, the value plus 32):
                // low nibbles of ql0, ql1, then high ones, each with its 2 bits of qh.
                let ws = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql0, nib),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(qh, two)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, nib),
                        _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_slli_epi16::<2>(two))),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), nib),
                        _mm256_and_si256(qh, _mm256_slli_epi16::<4>(two)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), nib),
                        _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_slli_epi16::<6>(two))),
                    ),
                ];
                for (t, &wt) in ws.iter().enumerate() {
                    // Vector t's two 16-value sub-blocks take scales 8h + 2t and 8h + 2t + 1,
                    // the 32-bit lane 4h + t of the widened scales.
                    let pair =
                        _mm256_permutevar8x32_epi32(sc_all, _mm256_set1_epi32((4 * h + t) as i32));
                    let scale = _mm256_shuffle_epi8(pair, spread);
                    for (sum, act) in sums.iter_mut().zip(&rows) {
                        // SAFETY: 256 bytes of quants in the activation block.
                        let x = unsafe {
                            _mm256_loadu_si256(act[b].qs.as_ptr().add(128 * h + 32 * t).cast())
                        };
                        let p = _mm256_maddubs_epi16(wt, x);
                        *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(p, scale));
                    }
                }
            }
            for ((sum, acc), act) in sums.iter().zip(acc.iter_mut()).zip(&rows) {
                let a = &act[b];
                // The values were stored plus 32: take 32 · scale · (sum of the 16 values).
                // SAFETY: 16 sums in `a`.
                let bs = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
                let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bs, sc_all));
                let s = _mm256_sub_epi32(*sum, corr);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d * a.d), *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { *out.add(r * stride + i) = hsum(*acc) };
        }
    }
}

/// [`q4k_rows`] for `R` rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k<const R: usize>(
    w: &[u8],
    nw: usize,
    acts: &[Act],
    kb: usize,
    out: *mut f32,
    stride: usize,
) {
    let nib = _mm256_set1_epi8(0x0F);
    let rows: [&[Act]; R] = std::array::from_fn(|r| &acts[r * kb..(r + 1) * kb]);
    for i in 0..nw {
        let w = &w[i * kb * Q4K_BYTES..(i + 1) * kb * Q4K_BYTES];
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, blk) in w.chunks_exact(Q4K_BYTES).enumerate() {
            prefetch_ahead(blk);
            let d = f16_at(blk, 0);
            let dmin = f16_at(blk, 2);
            // ggml's 6-bit scale/min unpacking: bytes 0..8 scales, 8..16 mins.
            let u = |i: usize| u32::from_le_bytes(blk[4 + 4 * i..8 + 4 * i].try_into().unwrap());
            let (u0, u1, u2) = (u(0), u(1), u(2));
            let s0 = u0 & 0x3f3f_3f3f;
            let s1 = (u2 & 0x0f0f_0f0f) | (((u0 >> 6) & 0x0303_0303) << 4);
            let m0 = u1 & 0x3f3f_3f3f;
            let m1 = ((u2 >> 4) & 0x0f0f_0f0f) | (((u1 >> 6) & 0x0303_0303) << 4);
            let scales = (u64::from(s1) << 32 | u64::from(s0)).to_le_bytes();
            // The 8 mins times dmin, for every row.
            let mins = _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(
                    0, 0, m1 as i32, m0 as i32,
                ))),
                _mm256_set1_ps(dmin),
            );
            let mut sums = [_mm256_setzero_si256(); R];
            for g in 0..4 {
                // SAFETY: the block has 128 bytes of nibbles at 16: 32 per 64-value group.
                let q = unsafe { _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * g).cast()) };
                // Sub-block 2g is the low nibbles, 2g + 1 the high ones.
                let halves = [
                    _mm256_and_si256(q, nib),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), nib),
                ];
                for (j, &wt) in halves.iter().enumerate() {
                    let sub = 2 * g + j;
                    let scale = _mm256_set1_epi16(i16::from(scales[sub]));
                    for (sum, act) in sums.iter_mut().zip(&rows) {
                        // SAFETY: 256 bytes of quants in the activation block.
                        let x =
                            unsafe { _mm256_loadu_si256(act[b].qs.as_ptr().add(32 * sub).cast()) };
                        let p = _mm256_maddubs_epi16(wt, x);
                        *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(p, scale));
                    }
                }
            }
            for ((sum, acc), act) in sums.iter().zip(acc.iter_mut()).zip(&rows) {
                let a = &act[b];
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*sum), _mm256_set1_ps(d * a.d), *acc);
                // SAFETY: 8 sub-block sums in `a`.
                let dsums = unsafe { _mm256_loadu_ps(a.dsums.as_ptr()) };
                *acc = _mm256_fnmadd_ps(mins, dsums, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: the caller's contract.
            unsafe { *out.add(r * stride + i) = hsum(*acc) };
        }
    }
}

/// Activation rows [`q4k8`] takes at once: its 16- and 32-bit sums and its results for four
/// rows, with the weights and the scales, fill the 16 vector registers.
const QUAD: usize = 4;

/// Q4_K by eights ([`super::Q4kByEights`]): `out[r * stride + 8g + i]` = row `i` of group `g`
/// times `acts[r]`, for the `ng` groups of `w` (`kb` blocks each) and the `rows` (≤ GROUP)
/// activation rows of `acts` (natural order), four rows at a time.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` holds `ng * kb` blocks, `acts` `rows * kb`, and `out` is
/// writable at the `rows × 8ng` places.
pub(super) unsafe fn q4k8_rows(
    w: &[Eights],
    ng: usize,
    acts: &[Act],
    kb: usize,
    rows: usize,
    out: *mut f32,
    stride: usize,
) {
    assert!(rows <= GROUP && w.len() >= ng * kb && acts.len() >= rows * kb);
    for g in 0..ng {
        let w = &w[g * kb..(g + 1) * kb];
        for (q, quad) in acts[..rows * kb].chunks(QUAD * kb).enumerate() {
            // SAFETY (each arm): the caller's contract, with the lengths asserted above; this
            // quad's rows start at row 4q, this group's columns at 8g.
            unsafe {
                let out = out.add(QUAD * q * stride + EIGHT * g);
                match quad.len() / kb {
                    1 => q4k8::<1>(w, quad, kb, out, stride),
                    2 => q4k8::<2>(w, quad, kb, out, stride),
                    3 => q4k8::<3>(w, quad, kb, out, stride),
                    _ => q4k8::<QUAD>(w, quad, kb, out, stride),
                }
            }
        }
    }
}

/// [`q4k8_rows`] for one group and `R` rows. Every row's sums are its own (no lane mixes rows),
/// so a row gets the same bits whatever `R` and its neighbours are.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k8<const R: usize>(
    w: &[Eights],
    acts: &[Act],
    kb: usize,
    out: *mut f32,
    stride: usize,
) {
    let nib = _mm256_set1_epi8(0x0F);
    // Eight 6-bit scales (one per weight row, the same 8 bytes in both 128-bit lanes) to 16-bit
    // words 2i and 2i + 1 = row i's scale: rows 0–3 in the low lane, 4–7 in the high one.
    let z = -128i8; // a `pshufb` index with the top bit set writes 0
    let spread = _mm256_setr_epi8(
        0, z, 0, z, 1, z, 1, z, 2, z, 2, z, 3, z, 3, z, 4, z, 4, z, 5, z, 5, z, 6, z, 6, z, 7, z,
        7, z,
    );
    let rows: [&[Act]; R] = std::array::from_fn(|r| &acts[r * kb..(r + 1) * kb]);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, blk) in w.iter().enumerate().take(kb) {
        // SAFETY: an `Eights` is plain bytes.
        prefetch_ahead(unsafe {
            std::slice::from_raw_parts((blk as *const Eights).cast::<u8>(), size_of::<Eights>())
        });
        let mut sums = [_mm256_setzero_si256(); R];
        for j in 0..8 {
            let mut sub = [_mm256_setzero_si256(); R];
            for u in 0..4 {
                // SAFETY: 32 bytes at 128j + 32u of the 1024 (aligned: the block is).
                let p = unsafe { _mm256_load_si256(blk.qs.as_ptr().add(128 * j + 32 * u).cast()) };
                let (lo, hi) = (
                    _mm256_and_si256(p, nib),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(p), nib),
                );
                for (s, act) in sub.iter_mut().zip(&rows) {
                    let x = act[b].qs.as_ptr();
                    // SAFETY: 4 bytes at 32j + 4u and at 32j + 16 + 4u of the 256.
                    let (x0, x1) = unsafe {
                        (
                            x.add(32 * j + 4 * u).cast::<i32>().read_unaligned(),
                            x.add(32 * j + 16 + 4 * u).cast::<i32>().read_unaligned(),
                        )
                    };
                    let p0 = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(x0));
                    let p1 = _mm256_maddubs_epi16(hi, _mm256_set1_epi32(x1));
                    *s = _mm256_add_epi16(*s, _mm256_add_epi16(p0, p1));
                }
            }
            // SAFETY: 8 scale bytes at 8j of the 64.
            let sc8 = unsafe {
                blk.scales
                    .as_ptr()
                    .add(8 * j)
                    .cast::<i64>()
                    .read_unaligned()
            };
            let scale = _mm256_shuffle_epi8(_mm256_set1_epi64x(sc8), spread);
            for (sum, s) in sums.iter_mut().zip(&sub) {
                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(*s, scale));
            }
        }
        // The mins term, in integers: row i's mins of sub-blocks 2q, 2q + 1 (16-bit words 2i,
        // 2i + 1) times the activation's sums of those sub-blocks.
        // SAFETY: 16 bytes at 16q of the 64 mins.
        let mins: [__m256i; 4] = std::array::from_fn(|q| {
            _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(blk.mins.as_ptr().add(16 * q).cast()) })
        });
        // SAFETY: 8 f16 values each.
        let (d, dmin) = unsafe {
            (
                _mm256_cvtph_ps(_mm_loadu_si128(blk.d.as_ptr().cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(blk.dmin.as_ptr().cast())),
            )
        };
        for ((acc, sum), act) in acc.iter_mut().zip(&sums).zip(&rows) {
            let a = &act[b];
            let mut m = _mm256_setzero_si256();
            for (q, &mq) in mins.iter().enumerate() {
                // SAFETY: sums 2q and 2q + 1 of the 8.
                let pair = unsafe { a.sums32.as_ptr().add(2 * q).cast::<i32>().read_unaligned() };
                m = _mm256_add_epi32(m, _mm256_madd_epi16(mq, _mm256_set1_epi32(pair)));
            }
            let dx = _mm256_set1_ps(a.d);
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*sum), _mm256_mul_ps(d, dx), *acc);
            *acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(m), _mm256_mul_ps(dmin, dx), *acc);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: the caller's contract: 8 columns of row r.
        unsafe { _mm256_storeu_ps(out.add(r * stride), *acc) };
    }
}
