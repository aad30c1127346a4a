//! Prompt products `x @ w.T` (many positions at once) on Intel AMX, straight from GGUF's Q4_K
//! and Q6_K blocks, in bfloat16 with f32 accumulation.
//!
//! Why: candle's prompt kernels are compute-bound at about 0.09 ms a position for the default
//! model's 8960×1536 Q4_K matrix, at 8 positions as at 320 (its AMX int8 kernel included: it
//! scales every 32-value sub-block of every position in f32, which costs more than the
//! products), so eight questions arriving together waited for 8× one prompt's reading. Here
//! each weight row is unpacked once per call to bfloat16 (scales and mins applied), so the
//! tile unit accumulates a whole row of `k` with no per-block work left, and the unpacking is
//! shared by every position of the call (`benches/bench_qgemv.rs`, that matrix, release, 2
//! threads: 40 positions 2.95 ms against candle's 3.55; 320 positions 12.5 against 23.2; the
//! 1536×8960 Q6_K one, 320 positions, 13.6 against 39.9). No copy of the weights is kept: it
//! reads the file's blocks, so it serves `cpu_prefill = "compact"` as well as `"repacked"`,
//! and candle builds no prompt copies of its own (its AMX one is a byte a weight).
//!
//! Precision: bfloat16 keeps 8 significant bits, so each product carries a relative error of
//! at most about 2⁻⁷ (both operands rounded to nearest), and the sums are f32: finer than the
//! Q8_K activations of the decode kernels (8 bits for the largest value of a block of 256),
//! and far finer than the 4- and 6-bit weights themselves. Tested against the exact sum, and
//! a whole prompt's logits against candle-transformers' (`qdecoder`'s tests: three times
//! closer to the exact f32 logits than candle's own).
//!
//! Layout: the weights are the left operand, 16 weight rows × 32 values of `k` per tile, from
//! a buffer that holds each 32-value chunk of 32 weight rows in one piece; the positions are
//! the right one, 16 rows of bf16 pairs (`k` even, `k` odd) × 16 positions, packed once per
//! call; a result tile is 16 weight rows × 16 positions, transposed into `dst` at the end.
//! Long rows with many positions are summed in passes over slices of `k`, so that the
//! positions' slice stays in L2 while every weight tile goes by (`x86::k_per_pass`).
//! candle's AMX kernel configures the tiles of a worker thread once and then assumes them:
//! every call here loads its own configuration and puts candle's back before returning.

use candle_core::quantized::GgmlDType;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
use candle_core::quantized::k_quants::QK_K;
use std::mem::MaybeUninit;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
use super::qgemv::{Q4K_BYTES, Q6K_BYTES};

/// Fewest positions worth the AMX path: below this, unpacking every weight row costs more than
/// candle's tiles spend on the positions (the 8960×1536 Q4_K matrix: 16 positions 2.1 ms
/// against 1.1; 40 positions 2.95 against 3.55; `benches/bench_qgemv.rs`).
pub(crate) const MIN_ROWS: usize = 32;

/// True when this CPU and OS run AMX bf16 (checked once; asks Linux for the tile state).
pub(crate) fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            use std::arch::x86_64::__cpuid_count;
            if !(std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512bf16")
                && std::is_x86_feature_detected!("f16c"))
            {
                return false;
            }
            // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
            let edx = __cpuid_count(7, 0).edx;
            if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
                return false;
            }
            // Linux hands out the 8 KB tile state only to processes that ask for it.
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call with integer arguments.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            };
            r == 0
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// True when [`matmul`] runs on this CPU for matrices of `dtype` (of a whole number of 16-row
/// tiles and 256-value blocks): callers ask before they lay out its input.
pub(crate) fn handles(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4K | GgmlDType::Q6K) && available()
}

/// `dst[r * n + j] = lhs[r] · w[j]` for the `m` rows of `lhs` (`[m, k]`) and the `n` weight rows
/// held in `blocks` (`n * k / 256` blocks of `dtype`). False (nothing written) when the block
/// type, the shape or the CPU is not one this module handles. (The model takes [`matmul_new`];
/// this serves the tests and `testing`.)
#[cfg(any(test, feature = "testing"))]
pub(crate) fn matmul(
    dtype: GgmlDType,
    blocks: &[u8],
    mkn: (usize, usize, usize),
    lhs: &[f32],
    dst: &mut [f32],
) -> bool {
    // SAFETY: same layout; only initialized values are written through it.
    let dst = unsafe { &mut *(std::ptr::from_mut(dst) as *mut [MaybeUninit<f32>]) };
    matmul_into(dtype, blocks, mkn, lhs, dst)
}

/// As [`matmul`], into a fresh `m * n` vector that is not zeroed first (the kernel writes every
/// place): at 184 positions a prompt's products would otherwise zero about 465 MB, and
/// `memset` was 5.6% of `bench_llm`'s prefill samples. None when [`matmul`] would decline.
pub(crate) fn matmul_new(
    dtype: GgmlDType,
    blocks: &[u8],
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
) -> Option<Vec<f32>> {
    let mut dst = Vec::with_capacity(m * n);
    if !matmul_into(
        dtype,
        blocks,
        (m, k, n),
        lhs,
        &mut dst.spare_capacity_mut()[..m * n],
    ) {
        return None;
    }
    // SAFETY: `matmul_into` wrote all m * n values.
    unsafe { dst.set_len(m * n) };
    Some(dst)
}

fn matmul_into(
    dtype: GgmlDType,
    blocks: &[u8],
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    dst: &mut [MaybeUninit<f32>],
) -> bool {
    if super::qgemv::whole_blocks(dtype, blocks, (m, k, n), lhs, dst.len()).is_none()
        || k == 0
        || !n.is_multiple_of(16)
        || !available()
    {
        return false;
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        // SAFETY: `available()` checked the CPU features and the OS permission; the shapes
        // were checked above. Every one of the m * n places is written.
        unsafe {
            x86::matmul(
                dtype == GgmlDType::Q4K,
                blocks,
                (m, k, n),
                lhs,
                dst.as_mut_ptr().cast(),
            )
        };
        true
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// What the tile unit costs on this machine, in nanoseconds per instruction, each timed alone on
/// the calling thread over `reps` rounds of four: loading a 1 KB tile from L1, a bfloat16 product
/// of tiles already loaded, and one step of [`matmul`]'s inner loop (two weight tiles and two
/// position tiles loaded, four products), per product. None without AMX. For
/// `benches/bench_machine.rs`: the kernel is bound by whichever of the first two is slower, as
/// the 2 × 2 blocking (the most eight tiles allow) loads one tile per product.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn tile_costs(reps: usize) -> Option<[f64; 3]> {
    if !available() || reps == 0 {
        return None;
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        // SAFETY: `available()` checked the CPU features and the OS permission.
        Some(unsafe { x86::tile_costs(reps) })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        None
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86 {
    use super::{Q4K_BYTES, Q6K_BYTES, QK_K};
    use std::arch::x86_64::*;

    /// A palette-1 tile configuration.
    #[repr(C, align(64))]
    struct TileCfg {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    impl TileCfg {
        /// `shapes[t]` = (rows, bytes per row) of tile register `t`.
        fn new(shapes: [(u8, u16); 8]) -> Self {
            let mut cfg = TileCfg {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                colsb: [0; 16],
                rows: [0; 16],
            };
            for (t, (rows, bytes)) in shapes.into_iter().enumerate() {
                cfg.rows[t] = rows;
                cfg.colsb[t] = bytes;
            }
            cfg
        }

        /// # Safety
        /// AMX and the tile permission were checked.
        unsafe fn load(&self) {
            // SAFETY: a valid palette-1 configuration (the caller checked AMX).
            unsafe {
                core::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) self, options(nostack));
            }
        }
    }

    /// Ours: `tmm0`–`tmm3` results (16 × 16 f32), `tmm4`/`tmm5` weights (16 rows × 32 bf16),
    /// `tmm6`/`tmm7` positions (16 pair rows × 16 positions).
    fn ours() -> TileCfg {
        TileCfg::new([
            (16, 64),
            (16, 64),
            (16, 64),
            (16, 64),
            (16, 64),
            (16, 64),
            (16, 64),
            (16, 64),
        ])
    }

    /// candle's (`candle_core::quantized::repack_x86::amx::configure`), which it loads once per
    /// thread and then assumes: every call here loads ours and puts candle's back before the
    /// worker thread runs anything else, so candle's AMX kernel stays right on these threads.
    fn candles() -> TileCfg {
        TileCfg::new([
            (16, 64),
            (16, 64),
            (16, 64),
            (16, 64),
            (16, 32),
            (16, 32),
            (8, 64),
            (8, 64),
        ])
    }

    #[inline]
    fn f16_at(b: &[u8], at: usize) -> f32 {
        half_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
    }

    fn half_to_f32(bits: u16) -> f32 {
        // SAFETY: f16c was checked by `available()` before any caller runs.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits)))) }
    }

    /// ggml's 6-bit (scale, min) of sub-block `j` of a Q4_K block.
    fn scale_min(j: usize, s: &[u8]) -> (f32, f32) {
        let (sc, mn) = if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            (
                (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
                (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
            )
        };
        (f32::from(sc), f32::from(mn))
    }

    /// 32 floats (two vectors, `lo` first) to 32 bf16 at `out`, rounded to nearest even.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn store_bf16(out: *mut u16, lo: __m512, hi: __m512) {
        let packed: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo)) };
        // SAFETY: the caller passes room for 32 values.
        unsafe { _mm512_storeu_si512(out.cast(), packed) };
    }

    /// One Q4_K block (256 values) unpacked to bf16: its 32-value sub-block `s` at
    /// `out + s * stride`.
    ///
    /// A sub-block's 32 values take only 16 distinct values, `d·scale·q − dmin·min` for
    /// q = 0..15: those are computed once (the same fused multiply-subtract and rounding as
    /// value by value, so the results are bit for bit the same), two sub-blocks' tables in
    /// one vector, and each nibble picks its value with one word permute. Against converting
    /// every nibble to f32 and back, the 8960×1536 matrix, medians of 15 alternating calls in
    /// one process (a throwaway probe, this machine): 40 positions 1.72 ms against 1.91, 184
    /// positions 3.37 against 3.64; the same bits.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,f16c")]
    unsafe fn q4k_block(blk: &[u8], out: *mut u16, stride: usize) {
        let d = f16_at(blk, 0);
        let dmin = f16_at(blk, 2);
        let scales = &blk[4..16];
        let qs = &blk[16..Q4K_BYTES];
        let q = _mm512_setr_ps(
            0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
        );
        let nib = _mm512_set1_epi16(0x0F);
        let upper = _mm512_set1_epi16(16);
        for c in 0..4 {
            // Bytes 32c..32c+32 hold values 64c.. in their low nibbles (sub-block 2c) and
            // 64c+32.. in their high ones (sub-block 2c+1).
            let (s0, m0) = scale_min(2 * c, scales);
            let (s1, m1) = scale_min(2 * c + 1, scales);
            let t0 = _mm512_fmsub_ps(q, _mm512_set1_ps(d * s0), _mm512_set1_ps(dmin * m0));
            let t1 = _mm512_fmsub_ps(q, _mm512_set1_ps(d * s1), _mm512_set1_ps(dmin * m1));
            // Words 0..16: sub-block 2c's table; 16..32: sub-block 2c + 1's.
            let table: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(t1, t0)) };
            // SAFETY: `qs` has 128 bytes; this reads 32 at 32c.
            let b = unsafe { _mm256_loadu_si256(qs.as_ptr().add(32 * c).cast()) };
            let w = _mm512_cvtepu8_epi16(b);
            let lo = _mm512_permutexvar_epi16(_mm512_and_si512(w, nib), table);
            let hi =
                _mm512_permutexvar_epi16(_mm512_add_epi16(_mm512_srli_epi16::<4>(w), upper), table);
            // SAFETY: the caller gives room for 32 values at each sub-block's place.
            unsafe {
                _mm512_storeu_si512(out.add(2 * c * stride).cast(), lo);
                _mm512_storeu_si512(out.add((2 * c + 1) * stride).cast(), hi);
            }
        }
    }

    /// One Q6_K block (256 values) unpacked to bf16, placed as [`q4k_block`] does.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,f16c")]
    unsafe fn q6k_block(blk: &[u8], out: *mut u16, stride: usize) {
        let d = f16_at(blk, 208);
        let scales = &blk[192..208];
        let low = _mm512_set1_epi32(0x0F);
        let two = _mm512_set1_epi32(3);
        let off = _mm512_set1_epi32(32);
        for h in 0..2 {
            let ql = &blk[64 * h..64 * h + 64];
            let qh = &blk[128 + 32 * h..128 + 32 * h + 32];
            let sc = &scales[8 * h..8 * h + 8];
            // Values 128h + 32p + l (p = 0..4, l = 0..32) with scale sc[p * 2 + l / 16].
            let mut v = [[_mm512_setzero_ps(); 2]; 4];
            for half in 0..2 {
                let l0 = 16 * half;
                // SAFETY: `ql` has 64 bytes and `qh` 32: these read 16 at l0 and l0 + 32.
                let (a, b, hb) = unsafe {
                    (
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(ql.as_ptr().add(l0).cast())),
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(ql.as_ptr().add(l0 + 32).cast())),
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(qh.as_ptr().add(l0).cast())),
                    )
                };
                let parts = [
                    (_mm512_and_si512(a, low), hb),
                    (_mm512_and_si512(b, low), _mm512_srli_epi32::<2>(hb)),
                    (_mm512_srli_epi32::<4>(a), _mm512_srli_epi32::<4>(hb)),
                    (_mm512_srli_epi32::<4>(b), _mm512_srli_epi32::<6>(hb)),
                ];
                for (p, (l4, h2)) in parts.into_iter().enumerate() {
                    let q = _mm512_sub_epi32(
                        _mm512_or_si512(l4, _mm512_slli_epi32::<4>(_mm512_and_si512(h2, two))),
                        off,
                    );
                    let s = d * f32::from(sc[2 * p + half] as i8);
                    v[p][half] = _mm512_mul_ps(_mm512_set1_ps(s), _mm512_cvtepi32_ps(q));
                }
            }
            for (p, v) in v.iter().enumerate() {
                // SAFETY: the caller gives room for 32 values at each sub-block's place.
                unsafe { store_bf16(out.add((4 * h + p) * stride), v[0], v[1]) };
            }
        }
    }

    /// The positions as the right-hand tiles: for 16-position tile `t` and pair `w` (values
    /// `2w`, `2w + 1` of `k`), the 16 positions' pairs as 32-bit words at `(t * k / 2 + w) * 16`,
    /// so the tile for 32-value chunk `c` is the 16 rows from pair `16c`. Positions past `m`
    /// are zeros.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_positions(lhs: &[f32], m: usize, k: usize) -> Vec<u32> {
        let tiles = m.div_ceil(16);
        // Row-major bf16 first (zero rows to a whole tile), then gather the pairs.
        let mut rows = vec![0u16; tiles * 16 * k];
        for (x, out) in lhs.chunks_exact(32).zip(rows.chunks_exact_mut(32)) {
            // SAFETY: 32 floats in, room for 32 values out.
            unsafe {
                let lo = _mm512_loadu_ps(x.as_ptr());
                let hi = _mm512_loadu_ps(x.as_ptr().add(16));
                store_bf16(out.as_mut_ptr(), lo, hi);
            }
        }
        let words = k / 2;
        let mut packed = vec![0u32; tiles * words * 16];
        let lanes = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(words as i32),
        );
        let base = rows.as_ptr().cast::<i32>();
        for t in 0..tiles {
            for w in 0..words {
                // Word `w` (values 2w, 2w + 1) of positions 16t..16t+16.
                let idx = _mm512_add_epi32(lanes, _mm512_set1_epi32((t * 16 * words + w) as i32));
                // SAFETY: every index is below tiles * 16 * words, the words of `rows`.
                unsafe {
                    let v = _mm512_i32gather_epi32::<4>(idx, base);
                    _mm512_storeu_si512(packed.as_mut_ptr().add((t * words + w) * 16).cast(), v);
                }
            }
        }
        packed
    }

    /// One step of the product loop: result tiles `tmm0`–`tmm3` (2 × 2) gain weight tiles `a0`,
    /// `a1` times position tiles `b0`, `b1`, each 16 rows of 64 bytes in one piece.
    ///
    /// # Safety
    /// [`ours`] is the loaded tile configuration and each pointer has 1 KB readable.
    #[inline(always)]
    unsafe fn step(a0: *const u16, a1: *const u16, b0: *const u32, b1: *const u32) {
        // SAFETY: as the caller promised.
        unsafe {
            core::arch::asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                b0 = in(reg) b0,
                b1 = in(reg) b1,
                s = in(reg) 64usize,
                options(nostack)
            );
        }
    }

    /// Bytes of packed positions one pass over the weights reads again and again, at most:
    /// they stay in the core's L2 (2 MB here) beside the unpacked weights and the partial
    /// sums. With all of `k` at once, the 8960-long rows of `ffn_down` at 184 positions read
    /// 3.4 MB per pair of weight tiles from L3, and the tile loop ran at 20 ns a product
    /// against 8 from L2 (a C probe of the same loop on this machine).
    const POSITIONS_IN_L2: usize = 1024 << 10;

    /// Values of `k` per pass over the weights for `m_tiles` position tiles: whole 256-value
    /// blocks, as many as [`POSITIONS_IN_L2`] allows, at least one.
    pub(super) fn k_per_pass(m_tiles: usize, k: usize) -> usize {
        let per_value = m_tiles * 16 * 2;
        (POSITIONS_IN_L2 / per_value / QK_K)
            .max(1)
            .saturating_mul(QK_K)
            .min(k)
    }

    /// Result tile `tile` (16 weight rows × 16 positions, row-major) into `dst` transposed:
    /// position `p0 + p` gets the 16 values at columns `col0..col0 + 16`, for the positions
    /// below `m`. Sixteen gathers (one a position) in place of 256 scalar moves.
    ///
    /// # Safety
    /// `dst` has `m * n` values, `col0 + 16 <= n`, and no other thread writes these places.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_transposed(
        tile: &[f32],
        dst: *mut f32,
        (p0, m, n, col0): (usize, usize, usize, usize),
    ) {
        let column = _mm512_setr_epi32(
            0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240,
        );
        for p in 0..16.min(m.saturating_sub(p0)) {
            // SAFETY: indices p + 16w < 256 = tile.len(); the caller's contract for dst.
            unsafe {
                let v = _mm512_i32gather_ps::<4>(column, tile.as_ptr().add(p));
                _mm512_storeu_ps(dst.add((p0 + p) * n + col0), v);
            }
        }
    }

    /// See [`super::matmul`]; the caller checked the shapes and the CPU.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,f16c")]
    pub(super) unsafe fn matmul(
        q4k: bool,
        blocks: &[u8],
        (m, k, n): (usize, usize, usize),
        lhs: &[f32],
        dst: *mut f32,
    ) {
        let size = if q4k { Q4K_BYTES } else { Q6K_BYTES };
        let kb = k / QK_K;
        let m_tiles = m.div_ceil(16);
        let m_pairs = m_tiles.div_ceil(2);
        // SAFETY: the features were checked by the caller.
        let packed = unsafe { pack_positions(lhs, m, k) };
        let dst_addr = dst as usize;
        let (ours, candles) = (ours(), candles());
        // Passes over `k` (see `k_per_pass`): each reads a slice of every position tile, which
        // stays in L2 while the worker's weight tiles go by. With more than one pass, the
        // partial sums of every (weight pair, position pair) wait in `sums` between passes.
        let kc = k_per_pass(m_tiles, k);
        let passes = k.div_ceil(kc);
        // Work items: pairs of 16-row weight tiles. For each pass, a pair's slice of k is
        // unpacked once into the worker's buffer, then multiplied by every pair of position
        // tiles. The buffer holds 32-value chunk `ch` of weight row `r` at `(ch * 32 + r) * 32`,
        // so each left tile is 1 KB in one piece (measured: loading 16 rows strided by a whole
        // weight row took about twice as long a product).
        let n_tiles = n / 16;
        candle_core::utils::barrier_pool().execute_chunked(n_tiles.div_ceil(2), |range| {
            // SAFETY: AMX and the permission were checked by the caller.
            unsafe { ours.load() };
            let mut wbuf = vec![0u16; 32 * kc];
            let slots = if passes == 1 {
                1
            } else {
                range.len() * m_pairs
            };
            let mut sums = vec![0f32; slots * 1024];
            for pass in 0..passes {
                let (k0, k1) = (pass * kc, ((pass + 1) * kc).min(k));
                let (b0, b1) = (k0 / QK_K, k1 / QK_K);
                let last = pass + 1 == passes;
                for (i, pair) in range.clone().enumerate() {
                    let nt0 = 2 * pair;
                    let two = nt0 + 1 < n_tiles;
                    let rows = if two { 32 } else { 16 };
                    for r in 0..rows {
                        let row = &blocks[(nt0 * 16 + r) * kb * size..][..kb * size];
                        for b in b0..b1 {
                            let blk = &row[b * size..(b + 1) * size];
                            // SAFETY: sub-block s of block b of row r lands in chunk
                            // 8(b - b0) + s, at ((8(b - b0) + s) * 32 + r) * 32 < 32 * kc.
                            unsafe {
                                let out = wbuf.as_mut_ptr().add((8 * (b - b0) * 32 + r) * 32);
                                if q4k {
                                    q4k_block(blk, out, 1024)
                                } else {
                                    q6k_block(blk, out, 1024)
                                }
                            }
                        }
                    }
                    // With one weight tile left, the second left operand repeats the first
                    // and its results are dropped.
                    let a0 = wbuf.as_ptr();
                    // SAFETY: row 16 of chunk 0, inside the buffer.
                    let a1 = if two { unsafe { a0.add(512) } } else { a0 };
                    for mp in 0..m_pairs {
                        let mt = 2 * mp;
                        let two_m = mt + 1 < m_tiles;
                        let p0 = packed[(mt * k + k0) * 8..].as_ptr();
                        let p1 = if two_m {
                            packed[((mt + 1) * k + k0) * 8..].as_ptr()
                        } else {
                            p0
                        };
                        let slot = if passes == 1 { 0 } else { i * m_pairs + mp };
                        let c = &mut sums[slot * 1024..][..1024];
                        // SAFETY: tiles configured above; each load reads 16 rows of 64 bytes
                        // in one piece from `wbuf` (chunk ch at 1024 values), `packed` (tile
                        // mt, chunk k0 / 32 + ch at mt * k * 8 + 256 (k0 / 32 + ch) words) or
                        // `c`, inside their buffers; stores write 1 KB each into `c`.
                        unsafe {
                            if pass == 0 {
                                core::arch::asm!(
                                    "tilezero tmm0",
                                    "tilezero tmm1",
                                    "tilezero tmm2",
                                    "tilezero tmm3",
                                    options(nostack)
                                );
                            } else {
                                core::arch::asm!(
                                    "tileloadd tmm0, [{c} + {sc}*1]",
                                    "tileloadd tmm1, [{c} + {sc}*1 + 1024]",
                                    "tileloadd tmm2, [{c} + {sc}*1 + 2048]",
                                    "tileloadd tmm3, [{c} + {sc}*1 + 3072]",
                                    c = in(reg) c.as_ptr(),
                                    sc = in(reg) 64usize,
                                    options(nostack)
                                );
                            }
                            for ch in 0..(k1 - k0) / 32 {
                                step(
                                    a0.add(1024 * ch),
                                    a1.add(1024 * ch),
                                    p0.add(256 * ch),
                                    p1.add(256 * ch),
                                );
                            }
                            core::arch::asm!(
                                "tilestored [{c} + {sc}*1], tmm0",
                                "tilestored [{c} + {sc}*1 + 1024], tmm1",
                                "tilestored [{c} + {sc}*1 + 2048], tmm2",
                                "tilestored [{c} + {sc}*1 + 3072], tmm3",
                                c = in(reg) c.as_mut_ptr(),
                                sc = in(reg) 64usize,
                                options(nostack)
                            );
                        }
                        if !last {
                            continue;
                        }
                        // Result tile (weight tile i, position tile j) at c[(2i + j) * 256]:
                        // row = weight row, column = position.
                        for (ti, tj) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            if (ti == 1 && !two) || (tj == 1 && !two_m) {
                                continue;
                            }
                            let at = ((mt + tj) * 16, m, n, (nt0 + ti) * 16);
                            // SAFETY: columns col0..col0 + 16 <= n belong to this work item
                            // alone; `dst` has m * n values.
                            unsafe {
                                store_transposed(
                                    &c[(2 * ti + tj) * 256..][..256],
                                    dst_addr as *mut f32,
                                    at,
                                )
                            };
                        }
                    }
                }
            }
            // SAFETY: as above.
            unsafe { candles.load() };
        });
    }

    /// See [`super::tile_costs`]; the caller checked the CPU.
    #[cfg(any(test, feature = "testing"))]
    pub(super) unsafe fn tile_costs(reps: usize) -> [f64; 3] {
        // Four 1 KB tiles, zeros (bf16 zero), read again and again: they stay in L1.
        let buf = vec![0u16; 2048];
        let p = buf.as_ptr();
        // Nanoseconds per instruction of `round`, which runs four.
        let timed = |round: &dyn Fn()| {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                round();
            }
            t.elapsed().as_secs_f64() * 1e9 / (4 * reps) as f64
        };
        // SAFETY: AMX was checked and our configuration is loaded before any tile instruction;
        // every load reads 16 rows of 64 bytes inside `buf`.
        unsafe {
            ours().load();
            let load = timed(&|| {
                core::arch::asm!(
                    "tileloadd tmm4, [{p} + {s}*1]",
                    "tileloadd tmm6, [{p} + {s}*1 + 1024]",
                    "tileloadd tmm7, [{p} + {s}*1 + 2048]",
                    "tileloadd tmm5, [{p} + {s}*1 + 3072]",
                    p = in(reg) p,
                    s = in(reg) 64usize,
                    options(nostack)
                )
            });
            let product = timed(&|| {
                core::arch::asm!(
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    options(nostack)
                )
            });
            let inner = timed(&|| {
                step(
                    p,
                    p.add(512),
                    p.add(1024).cast::<u32>(),
                    p.add(1536).cast::<u32>(),
                )
            });
            candles().load();
            [load, product, inner]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// A random `[n, k]` matrix quantized to `dtype`: its blocks and its dequantized values.
    fn weights(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..n * k)
            .map(|i| {
                let h = (i as u64 ^ seed.wrapping_mul(0xA076_1D64_78BD_642F))
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (h >> 40) as f32 / 8_388_608.0 - 1.0
            })
            .collect();
        let w = Tensor::from_vec(values, (n, k), &dev).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let values = q
            .dequantize(&dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (q.data().unwrap().to_vec(), values)
    }

    fn activations(m: usize, k: usize) -> Vec<f32> {
        // Mixed magnitudes, so that rounding to bf16 matters for small and large values.
        (0..m * k)
            .map(|i| {
                let x =
                    ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32 / 16_777_216.0;
                (x - 0.5) * if i % 7 == 0 { 40.0 } else { 1.0 }
            })
            .collect()
    }

    /// Each result is the exact sum of the dequantized weights times the activations, within
    /// what rounding both operands to bfloat16 allows: every product is off by at most
    /// (1 + 2⁻⁸)² − 1 of its size (8 significant bits, rounded to nearest), plus at most `k`
    /// f32 roundings of the running sum. A wrong layout, scale or position is off by far more.
    #[test]
    fn products_match_the_exact_sum_within_bfloat16_rounding() {
        if !available() {
            eprintln!("skipped: this CPU or OS lacks AMX bf16");
            return;
        }
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            // Odd counts of weight tiles and position tiles, and a partial position tile; the
            // last shape's positions take two passes over k, the second shorter.
            for (m, k, n) in [
                (16, 256, 16),
                (37, 512, 48),
                (50, 1024, 64),
                (1, 256, 32),
                (520, 1024, 32),
            ] {
                let (blocks, w) = weights(dtype, n, k, (m + n) as u64);
                let x = activations(m, k);
                let mut dst = vec![f32::NAN; m * n];
                assert!(matmul(dtype, &blocks, (m, k, n), &x, &mut dst));
                for r in 0..m {
                    for j in 0..n {
                        let (mut exact, mut size) = (0f64, 0f64);
                        for i in 0..k {
                            let p = f64::from(w[j * k + i]) * f64::from(x[r * k + i]);
                            exact += p;
                            size += p.abs();
                        }
                        let bound = size
                            * (2f64.powi(-7) + 2f64.powi(-16) + k as f64 * 2f64.powi(-24))
                            + 1e-6;
                        let got = f64::from(dst[r * n + j]);
                        assert!(
                            (got - exact).abs() <= bound,
                            "{dtype:?} {m}x{k}x{n} [{r}, {j}]: {got} against {exact} (bound {bound})"
                        );
                    }
                }
            }
        }
    }

    /// A position's results do not depend on the positions beside it: the same row alone and
    /// among 40 or 519 others gives the same bits (with 520 positions the sums over k are
    /// made in two passes, stored and reloaded between them).
    #[test]
    fn each_position_is_computed_on_its_own() {
        if !available() {
            eprintln!("skipped: this CPU or OS lacks AMX bf16");
            return;
        }
        for (m, k, n) in [(41, 512, 64), (520, 1024, 32)] {
            each_alone_as_among_others(m, k, n);
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            assert_eq!(x86::k_per_pass(41usize.div_ceil(16), 512), 512);
            assert_eq!(x86::k_per_pass(520usize.div_ceil(16), 1024), 768);
        }
    }

    fn each_alone_as_among_others(m: usize, k: usize, n: usize) {
        let (blocks, _) = weights(GgmlDType::Q4K, n, k, 3);
        let x = activations(m, k);
        let mut all = vec![0f32; m * n];
        assert!(matmul(GgmlDType::Q4K, &blocks, (m, k, n), &x, &mut all));
        for r in [0, 17, 40, m - 1] {
            let mut one = vec![0f32; n];
            assert!(matmul(
                GgmlDType::Q4K,
                &blocks,
                (1, k, n),
                &x[r * k..][..k],
                &mut one
            ));
            assert_eq!(&all[r * n..][..n], &one[..], "position {r}");
        }
    }

    /// candle's own AMX kernel (a Q4_K product of 32 positions or more) gives the same bits
    /// before and after this kernel ran on the same worker threads: the tile configuration it
    /// assumes is put back.
    #[test]
    fn candles_amx_kernel_still_works_after_ours() {
        use candle_core::Module;
        if !available() {
            eprintln!("skipped: this CPU or OS lacks AMX bf16");
            return;
        }
        let dev = Device::Cpu;
        let (m, k, n) = (40, 512, 64);
        let (blocks, w) = weights(GgmlDType::Q4K, n, k, 5);
        let q =
            QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q4K).unwrap();
        let candle = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
        let x = activations(m, k);
        let xt = Tensor::from_vec(x.clone(), (m, k), &dev).unwrap();
        let before = candle
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for _ in 0..3 {
            let mut dst = vec![0f32; m * n];
            assert!(matmul(GgmlDType::Q4K, &blocks, (m, k, n), &x, &mut dst));
            let after = candle
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(before, after);
        }
    }

    #[test]
    fn the_tile_unit_is_timed_exactly_where_it_runs() {
        match tile_costs(1000) {
            Some(ns) => {
                assert!(available());
                assert!(ns.iter().all(|t| t.is_finite() && *t > 0.0), "{ns:?}");
            }
            None => assert!(!available()),
        }
        assert!(tile_costs(0).is_none());
    }

    #[test]
    fn other_block_types_and_shapes_are_declined() {
        let x = vec![0f32; 256];
        let mut dst = vec![0f32; 16];
        assert!(!matmul(
            GgmlDType::Q8_0,
            &[0; 16 * 8 * 34],
            (1, 256, 16),
            &x,
            &mut dst
        ));
        // n not a whole number of 16-row tiles.
        assert!(!matmul(
            GgmlDType::Q4K,
            &[0; 8 * 144],
            (1, 256, 8),
            &x,
            &mut dst
        ));
        // k not a whole number of blocks.
        assert!(!matmul(
            GgmlDType::Q4K,
            &[0; 16 * 144],
            (1, 128, 16),
            &x[..128],
            &mut dst
        ));
    }
}
