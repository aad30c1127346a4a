//! Decode-step products `x @ w.T` straight on GGUF's Q4_K and Q6_K blocks for a few rows at a
//! time (one new token of each of up to [`GROUP`] conversations), with AVX-512 VNNI, or on
//! CPUs without it with AVX2 and FMA ([`avx2`]).
//!
//! Why our own kernel: candle's block dot products (`k_quants::matmul`) unpack a weight block
//! again for every row and use AVX2's two-step `maddubs`/`madd`, so a step for 8 sequences cost
//! about what 8 single steps cost (measured with `scripts/bench-batch.sh`: 1.05× the
//! single-stream rate at 8 conversations); candle's repacked tiles keep a second, wider copy of
//! every matrix (+33% for Q4_K, +52% for Q6_K) and are slower than this kernel on Q6_K
//! matrices, the large output one included, but faster on Q4_K ones: where that copy is held
//! anyway (`cpu_prefill = "repacked"`, the default), the decoder sends Q4_K decode rows to
//! them and keeps this kernel for Q6_K, and for Q4_K with `"compact"`
//! (`benches/bench_qgemv.rs` measures all three side by side). Here each weight block is read
//! and unpacked once per step and then multiplied against every row with one `vpdpbusd` per 64
//! values, on the file's own bytes. On CPUs with AVX2 but no VNNI, a Q4_K matrix the decoder
//! holds a second copy of anyway ([`CpuPrefill::Repacked`](super::CpuPrefill::Repacked)) is
//! re-laid eight weight rows to a block ([`Q4kByEights`]) for a kernel that spends 9 multiply
//! instructions per 256 products of a row instead of 16, for prompts and decode steps alike.
//!
//! A kernel call takes 16 weight rows ([`x86::CHUNK`]) and reduces their 16-lane sums together
//! at the end (`x86::finish`), with the Q4_K mins folded into the same sums; one horizontal sum
//! per output (plus a second for the mins) had been about a fifth of the work of a 6-block
//! weight row (most matrices of the default model) for eight rows. `bench_qgemv`'s step lines,
//! three runs alternating with the previous kernel, medians of five rounds: Q4_K eight rows
//! 86.2 / 76.1 / 88.1 ms against 106.4 / 94.9 / 92.0, one row 35.2 / 33.2 / 38.5 against
//! 43.4 / 36.9 / 38.0; Q6_K eight rows 17.4 / 15.6 / 16.6 against 20.5 / 17.3 / 18.0.
//!
//! Built, measured and dropped (2026-12-02; `bench_qgemv`'s `step` lines time what a decode step
//! reads, from memory, and decided each):
//! - Q4_K with 16 weight rows as the lanes (fetched by gathers), so a block's sub-block scales
//!   apply to whole vectors instead of packs and 16-bit multiplies per row: about 1.5× as fast
//!   for 8 rows of one matrix in cache, but every Q4_K matrix of a step, from memory, took
//!   43–69 ms for one row against 31–48, and 62–121 for eight against 73–114. Not the gathers'
//!   fault: with the blocks re-laid so that plain loads of one stream replace them, one row
//!   took 50–56 ms, and with a prefetch one tile-block ahead 40.8–43.5 against 34.1–39.4 (eight
//!   rows 71.8–78.4 against 82.0–87.9); for one row the tile's per-block set-up (16 rows' scales
//!   unpacked for 64 multiply-adds a row) costs more than the row kernel's. One kernel must
//!   serve every row count of a block type (below), so the one-row loss decided.
//! - The same 16-row shape for Q6_K: 53 gathers a block (or 192 shuffles transposing loaded
//!   rows) cost more than the packs they save, even in cache (one row of the 1536×8960 matrix
//!   0.45–0.98 ms against 0.22–0.32).
//! - AMX int8 (`tdpbsud`) for those 16-row Q4_K tiles' sums, exact like VNNI's: 0.61–0.93 ms
//!   for 2 to 8 rows of the 8960×1536 matrix against 0.37–0.87 (six alternating rounds): each
//!   32-value sub-block needs its weights stored, two tile loads, a tile store and 8 loads
//!   back, whatever the row count.
//!
//! Arithmetic: both formats are integers times per-block scales, and the activation is
//! quantized to Q8_K exactly as candle does it (`BlockQ8K::from_float`), so each block's sum is
//! an exact integer; only the final per-block scaling is floating point. Every row is computed
//! by the same instruction sequence whatever the number of rows beside it, so a sequence's
//! logits do not depend on which other conversations share its step (the scheduler's batching
//! relies on this; `qdecoder::a_batched_step_gives_each_sequence_its_own_logits_exactly`).
//!
//! Block layouts (ggml's, `repr(C)`): Q4_K = d f16, dmin f16, 12 bytes of 6-bit scales and
//! mins, 128 bytes of nibbles (value `i` of the 64-value group `g` is the low nibble of byte
//! `32g + i` for `i < 32`, the high one of `32g + i - 32` after); Q6_K = 128 bytes of low
//! nibbles, 64 bytes of high 2-bit pairs, 16 signed 8-bit scales (one per 16 values), d f16;
//! Q8_K = d f32, 256 signed bytes, 16 sums of 16 values each.

use candle_core::quantized::GgmlDType;
use candle_core::quantized::k_quants::{BlockQ8K, QK_K};

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Rows computed together against one weight row: all accumulators fit in registers.
pub(crate) const GROUP: usize = 8;

pub(crate) const Q4K_BYTES: usize = 144;
pub(crate) const Q6K_BYTES: usize = 210;
const Q8K_BYTES: usize = 292;
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == Q8K_BYTES);

/// One row's Q8_K block in the order a kernel reads it (for Q4_K, the 32-value sub-blocks
/// interleaved to match the nibble halves of each 64-byte load).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Act {
    qs: [i8; QK_K],
    bsums: [i16; 16],
    /// For Q4_K: `d` times the sum of each 32-value sub-block, for the mins term.
    dsums: [f32; 8],
    /// The sum of each 32-value sub-block (for [`Q4kByEights`]' mins term, in integers).
    sums32: [i16; 8],
    d: f32,
}

/// Which kernels this CPU runs: the AVX-512 VNNI ones here, or [`avx2`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Vnni,
    Avx2,
}

/// The kernels this CPU runs (checked once); None where neither set does.
pub(crate) fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static ISA: OnceLock<Option<Isa>> = OnceLock::new();
        *ISA.get_or_init(|| {
            let has = |f: &str| match f {
                "avx512f" => std::is_x86_feature_detected!("avx512f"),
                "avx512bw" => std::is_x86_feature_detected!("avx512bw"),
                "avx512vl" => std::is_x86_feature_detected!("avx512vl"),
                "avx512vnni" => std::is_x86_feature_detected!("avx512vnni"),
                "avx512vbmi" => std::is_x86_feature_detected!("avx512vbmi"),
                "f16c" => std::is_x86_feature_detected!("f16c"),
                _ => false,
            };
            let all = |fs: &[&str]| fs.iter().all(|f| has(f));
            if all(&[
                "avx512f",
                "avx512bw",
                "avx512vl",
                "avx512vnni",
                "avx512vbmi",
                "f16c",
            ]) {
                Some(Isa::Vnni)
            } else if avx2_runs() {
                Some(Isa::Avx2)
            } else {
                None
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// True when this CPU runs the kernels (checked once).
pub(crate) fn available() -> bool {
    isa().is_some()
}

/// True where the AVX2 kernels ([`avx2`], [`Q4kByEights`]') run: AVX2, FMA and F16C. AVX-512
/// machines have them too, so the tests run them there; the decoder takes them only where
/// [`isa`] is [`Isa::Avx2`].
pub(crate) fn avx2_runs() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Weight rows interleaved in one [`Eights`] block.
pub(crate) const EIGHT: usize = 8;

/// One Q4_K block (256 values) of each of eight consecutive weight rows, re-laid so that one
/// 32-byte load holds four consecutive values of all eight rows: multiplied by four bytes of
/// one activation row broadcast to every lane, `maddubs` gives each weight row its own 16-bit
/// lanes, eight such products (a 32-value sub-block) add up in 16 bits without overflow
/// (|8 · 2 · 15 · 128| < 2¹⁵), and one `madd` by the eight rows' sub-block scales finishes
/// the sub-block: 9 multiply instructions per 256 products of a row where the file's layout
/// takes 16 (a `maddubs` and a `madd` per 32 values), and no horizontal sums at the end. The
/// same bytes as the file's blocks plus 32 per eight blocks (the scales unpacked).
#[repr(C, align(32))]
#[derive(Clone, Copy)]
pub(crate) struct Eights {
    /// Sub-block `j`, quarter `u`, at `128j + 32u`: byte `4n + e` holds value `32j + 4u + e`
    /// of row `n` in its low nibble and value `32j + 16 + 4u + e` in its high one.
    qs: [u8; 1024],
    /// Row `n`'s 6-bit scale of sub-block `j` at `8j + n`.
    scales: [u8; 64],
    /// Row `n`'s 6-bit mins of sub-blocks `2q` and `2q + 1` at `16q + 2n` and `16q + 2n + 1`.
    mins: [u8; 64],
    /// Each row's block scale and min scale, f16 bits.
    d: [u16; EIGHT],
    dmin: [u16; EIGHT],
}

impl Eights {
    const ZERO: Self = Self {
        qs: [0; 1024],
        scales: [0; 64],
        mins: [0; 64],
        d: [0; EIGHT],
        dmin: [0; EIGHT],
    };

    /// Writes row `n`'s block from the file's 144 bytes (d, dmin, 12 bytes of packed 6-bit
    /// scales and mins, 128 of nibbles: see the module's block layouts).
    fn set_row(&mut self, n: usize, blk: &[u8]) {
        self.d[n] = u16::from_le_bytes([blk[0], blk[1]]);
        self.dmin[n] = u16::from_le_bytes([blk[2], blk[3]]);
        // ggml's `get_scale_min_k4`.
        let q = &blk[4..16];
        for j in 0..8 {
            let (sc, m) = if j < 4 {
                (q[j] & 63, q[j + 4] & 63)
            } else {
                (
                    (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
                    (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                )
            };
            self.scales[8 * j + n] = sc;
            self.mins[16 * (j / 2) + 2 * n + j % 2] = m;
        }
        // Bytes 32g..32g+32 hold sub-block 2g in their low nibbles and 2g + 1 in their high
        // ones; values t and t + 16 of a sub-block share a byte here.
        // Four bytes at a time (a byte at a time made loading the default model 2.5 s slower).
        let word = |at: usize| u32::from_le_bytes(blk[at..at + 4].try_into().expect("4 bytes"));
        for g in 0..4 {
            for u in 0..4 {
                let (a, b) = (word(16 + 32 * g + 4 * u), word(16 + 32 * g + 16 + 4 * u));
                let lo = (a & 0x0F0F_0F0F) | ((b & 0x0F0F_0F0F) << 4);
                let hi = ((a >> 4) & 0x0F0F_0F0F) | (b & 0xF0F0_F0F0);
                let at = 256 * g + 32 * u + 4 * n;
                self.qs[at..at + 4].copy_from_slice(&lo.to_le_bytes());
                self.qs[at + 128..at + 132].copy_from_slice(&hi.to_le_bytes());
            }
        }
    }
}

/// A Q4_K matrix `[n, k]` as [`Eights`] blocks, for CPUs with AVX2 but not AVX-512 VNNI: one
/// kernel for decode steps and prompts alike, where the file-layout kernel ([`avx2`]) spends
/// two multiply instructions per 32 products of a row. `bench_qgemv` (AMD EPYC, the default
/// model's 8960×1536 FFN matrix) against candle's repacked tiles (a copy 1.33× the file's
/// blocks): one row 0.52 against 1.45 ms, eight rows 2.72 against 4.48, 40 (a prompt chunk)
/// 13.3 against 21.4, 320 rows 95 against 157.
pub(crate) struct Q4kByEights {
    /// Eight rows' block `b` of group `g` at `g * kb + b`.
    blocks: Vec<Eights>,
    n: usize,
    kb: usize,
}

impl Q4kByEights {
    /// The file's Q4_K blocks of an `[n, k]` matrix re-laid; None where the kernel does not run
    /// ([`avx2_runs`]), `n` is not a multiple of eight or the bytes are not whole blocks.
    pub(crate) fn new(blocks: &[u8], n: usize, k: usize) -> Option<Self> {
        let ok = avx2_runs()
            && n > 0
            && n.is_multiple_of(EIGHT)
            && k.is_multiple_of(QK_K)
            && blocks.len() == n * (k / QK_K) * Q4K_BYTES;
        if !ok {
            return None;
        }
        let kb = k / QK_K;
        let mut out = vec![Eights::ZERO; n / EIGHT * kb];
        let addr = out.as_mut_ptr() as usize;
        // At load, on every core (the default model's 596 MiB of Q4_K in about a second on one).
        candle_core::utils::barrier_pool().execute_chunked(n / EIGHT, |groups| {
            for g in groups {
                // SAFETY: work item `g` writes blocks `g * kb..(g + 1) * kb` of `out` only, and
                // `out` outlives the pool's work (execute_chunked returns when all is done).
                let dst = unsafe {
                    std::slice::from_raw_parts_mut((addr as *mut Eights).add(g * kb), kb)
                };
                for (b, e) in dst.iter_mut().enumerate() {
                    for row in 0..EIGHT {
                        let at = ((g * EIGHT + row) * kb + b) * Q4K_BYTES;
                        e.set_row(row, &blocks[at..at + Q4K_BYTES]);
                    }
                }
            }
        });
        Some(Self { blocks: out, n, kb })
    }

    /// Weight rows.
    pub(crate) fn rows(&self) -> usize {
        self.n
    }
}

/// A matrix for [`matmul_many`].
#[derive(Clone, Copy)]
pub(crate) enum Weights<'a> {
    /// The file's blocks of a Q4_K or Q6_K matrix with this many rows.
    Blocks(GgmlDType, &'a [u8], usize),
    /// A Q4_K matrix re-laid by eights.
    Q4kByEights(&'a Q4kByEights),
}

impl Weights<'_> {
    fn rows(&self) -> usize {
        match *self {
            Weights::Blocks(_, _, n) => n,
            Weights::Q4kByEights(w) => w.n,
        }
    }
}

/// The bytes of one block when `dtype` is Q4_K or Q6_K and the buffers of a product
/// `[m, k] @ [n, k].T` hold whole blocks and rows (`blocks`: `n * k / 256` blocks, `lhs`:
/// `m * k` values, `dst`: room for `m * n`, `m` not zero): the checks this module's
/// kernels and [`super::amx`]'s share.
pub(crate) fn whole_blocks(
    dtype: GgmlDType,
    blocks: &[u8],
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    dst_len: usize,
) -> Option<usize> {
    let size = match dtype {
        GgmlDType::Q4K => Q4K_BYTES,
        GgmlDType::Q6K => Q6K_BYTES,
        _ => return None,
    };
    (m > 0
        && k.is_multiple_of(QK_K)
        && blocks.len() == n * (k / QK_K) * size
        && lhs.len() == m * k
        && dst_len >= m * n)
        .then_some(size)
}

/// `dst[r * n + j] = lhs[r] · w[j]` for the `m` rows of `lhs` (`[m, k]`) and the `n` weight rows
/// held in `blocks` (`n * k / 256` blocks of `dtype`). False (nothing written) when the block
/// type or the CPU is not one this module handles.
pub(crate) fn matmul(
    dtype: GgmlDType,
    blocks: &[u8],
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    dst: &mut [f32],
) -> bool {
    matmul_many(
        &[Weights::Blocks(dtype, blocks, n)],
        (m, k),
        lhs,
        &mut [dst],
    )
}

/// [`matmul`] of a Q4_K matrix re-laid by eights (`lhs`: `[m, k]`, `dst`: room for `m * n`).
/// False (nothing written) when the shapes do not fit.
pub(crate) fn matmul_by_eights(
    w: &Q4kByEights,
    (m, k): (usize, usize),
    lhs: &[f32],
    dst: &mut [f32],
) -> bool {
    matmul_many(&[Weights::Q4kByEights(w)], (m, k), lhs, &mut [dst])
}

/// [`matmul`] of one input by several matrices (`mats[i]`, results in `dsts[i]`), such as a
/// layer's query, key and value projections: the input is quantized once for each block
/// layout and every matrix's rows go to the worker pool as one work list, so the step waits at
/// one barrier instead of one per matrix. Each result is exactly what [`matmul`] (or
/// [`matmul_by_eights`]) gives alone. False (nothing written) when any matrix is not one this
/// module handles.
pub(crate) fn matmul_many(
    mats: &[Weights<'_>],
    (m, k): (usize, usize),
    lhs: &[f32],
    dsts: &mut [&mut [f32]],
) -> bool {
    if mats.len() != dsts.len() || !available() {
        return false;
    }
    let mut sizes = Vec::with_capacity(mats.len());
    for (mat, dst) in mats.iter().zip(dsts.iter()) {
        let size = match *mat {
            Weights::Blocks(dtype, blocks, n) => {
                whole_blocks(dtype, blocks, (m, k, n), lhs, dst.len())
            }
            Weights::Q4kByEights(w) => {
                (m > 0 && w.kb * QK_K == k && lhs.len() == m * k && dst.len() >= m * w.n)
                    .then_some(std::mem::size_of::<Eights>())
            }
        };
        match size {
            Some(size) => sizes.push(size),
            None => return false,
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = isa() == Some(Isa::Vnni);
        let kb = k / QK_K;
        // The VNNI Q4_K kernel reads its activations' sub-blocks interleaved; every other
        // kernel in natural order.
        let file_q4k = |mat: &Weights<'_>| matches!(mat, Weights::Blocks(GgmlDType::Q4K, ..));
        let interleaved = (vnni && mats.iter().any(file_q4k)).then(|| quantize(lhs, m, k, true));
        let natural = mats
            .iter()
            .any(|mat| !(vnni && file_q4k(mat)))
            .then(|| quantize(lhs, m, k, false));
        let chunk_of = |mat: &Weights<'_>| match mat {
            Weights::Blocks(..) if vnni => x86::CHUNK,
            _ => avx2::CHUNK,
        };
        let dst_addrs: Vec<usize> = dsts.iter_mut().map(|d| d.as_mut_ptr() as usize).collect();
        // Work item `c` is chunk `c - first[i]` of matrix `i`, the last `i` with `first[i] <= c`.
        let mut first = Vec::with_capacity(mats.len());
        let mut items = 0;
        for mat in mats {
            first.push(items);
            items += mat.rows().div_ceil(chunk_of(mat));
        }
        // Weight rows are split across candle's worker pool (the one its own kernels use, so
        // the model never runs more threads than it was given) in chunks of [`x86::CHUNK`]:
        // the VNNI kernels reduce a chunk's sums together.
        candle_core::utils::barrier_pool().execute_chunked(items, |range| {
            for c in range {
                let i = first.partition_point(|&f| f <= c) - 1;
                let mat = mats[i];
                let (n, chunk) = (mat.rows(), chunk_of(&mat));
                let c = c - first[i];
                let (j0, nw) = (c * chunk, chunk.min(n - c * chunk));
                let acts = if vnni && file_q4k(&mat) {
                    &interleaved
                } else {
                    &natural
                };
                let acts = acts.as_deref().expect("quantized for every layout in use");
                // Rows of `lhs` in groups of GROUP (all of a decode step; a prompt's in turn),
                // each against this chunk's weight rows while they are in cache.
                for (g, group) in acts.chunks(GROUP * kb).enumerate() {
                    let rows = group.len() / kb;
                    // SAFETY: `isa()` (or, for Q4kByEights, which only exists where its kernel
                    // runs, `avx2_runs()`) checked the CPU features the kernels enable;
                    // `w` holds `nw` rows of `kb` blocks, `group` `rows * kb` activations, and
                    // `dsts[i]` (`m * n`, checked above) has room for columns `j0..j0 + nw` of
                    // rows `g * GROUP..` + `rows`, which no other work item writes.
                    unsafe {
                        let out = (dst_addrs[i] as *mut f32).add(g * GROUP * n + j0);
                        match mat {
                            Weights::Q4kByEights(w) => {
                                let (g0, ng) = (j0 / EIGHT, nw / EIGHT);
                                let w = &w.blocks[g0 * kb..(g0 + ng) * kb];
                                avx2::q4k8_rows(w, ng, group, kb, rows, out, n)
                            }
                            Weights::Blocks(dtype, blocks, _) => {
                                let size = sizes[i];
                                let w = &blocks[j0 * kb * size..(j0 + nw) * kb * size];
                                match (vnni, dtype == GgmlDType::Q4K) {
                                    (true, true) => x86::q4k_rows(w, nw, group, kb, rows, out, n),
                                    (true, false) => x86::q6k_rows(w, nw, group, kb, rows, out, n),
                                    (false, true) => avx2::q4k_rows(w, nw, group, kb, rows, out, n),
                                    (false, false) => {
                                        avx2::q6k_rows(w, nw, group, kb, rows, out, n)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = sizes;
        false
    }
}

/// Each row of `lhs` as Q8_K blocks (candle's quantization, bit for bit, so the integers are
/// the ones its kernels see), laid out for the kernel. Only called where [`isa`] is known.
#[cfg(target_arch = "x86_64")]
fn quantize(lhs: &[f32], m: usize, k: usize, interleave: bool) -> Vec<Act> {
    let mut acts = Vec::with_capacity(m * (k / QK_K));
    let mut qs = [0i8; QK_K];
    for row in lhs.chunks(k).take(m) {
        for block in row.chunks_exact(QK_K) {
            let mut a = Act {
                qs: [0; QK_K],
                bsums: [0; 16],
                dsums: [0.0; 8],
                sums32: [0; 8],
                d: 0.0,
            };
            // SAFETY: each quantizer runs where `isa()` found the features it enables (this
            // function is only called where it found one set or the other).
            a.d = unsafe {
                if isa() == Some(Isa::Vnni) {
                    x86::q8k_block(block, &mut qs, &mut a.bsums)
                } else {
                    avx2::q8k_block(block, &mut qs, &mut a.bsums)
                }
            };
            if interleave {
                // Sub-blocks in the order 0,2,1,3,4,6,5,7: the low nibbles of a 64-byte load
                // of Q4_K are sub-blocks 2g and 2g+2, the high ones 2g+1 and 2g+3.
                for (slot, sub) in [0, 2, 1, 3, 4, 6, 5, 7].into_iter().enumerate() {
                    a.qs[slot * 32..][..32].copy_from_slice(&qs[sub * 32..][..32]);
                }
            } else {
                a.qs = qs;
            }
            for j in 0..8 {
                // |32 · 128| fits in 16 bits.
                a.sums32[j] = a.bsums[2 * j] + a.bsums[2 * j + 1];
                a.dsums[j] = a.d * f32::from(a.sums32[j]);
            }
            acts.push(a);
        }
    }
    acts
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Act, GROUP, Q4K_BYTES, Q6K_BYTES};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    #[inline]
    #[target_feature(enable = "f16c")]
    pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
        let bits = u16::from_le_bytes([b[at], b[at + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// Index bytes for `vpermb`: byte `2j` of the result takes byte `f(j)` of the source (odd
    /// bytes are zeroed by the caller's mask, making 16-bit lanes).
    fn words_from(f: impl Fn(usize) -> u8) -> [u8; 64] {
        let mut idx = [0u8; 64];
        for j in 0..32 {
            idx[2 * j] = f(j);
        }
        idx
    }

    /// One block of 256 values as Q8_K, exactly as candle's `BlockQ8K::from_float` does it
    /// (the value of largest magnitude, the first one on a tie, maps to -127; each value is
    /// `round(x * -127 / max)`, halves away from zero, clamped to i8): writes the quants and the
    /// 16 sums of 16, returns the scale `d`. Vectorized because candle's scalar loop (a libm
    /// `roundf` per value) measured 7.8–8.5 ns a value against 0.8–1.4 here, layout included
    /// (8 rows of 8960, release): about 9 ms of a decode step for eight conversations of the
    /// default model, on one core, before.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn q8k_block(xs: &[f32], qs: &mut [i8; 256], bsums: &mut [i16; 16]) -> f32 {
        assert_eq!(xs.len(), 256, "one block");
        let mut v = [_mm512_setzero_ps(); 16];
        let mut amax = _mm512_setzero_ps();
        for (c, v) in v.iter_mut().enumerate() {
            // SAFETY: `xs` has 256 floats; chunk `c` reads 16 at 16c.
            *v = unsafe { _mm512_loadu_ps(xs.as_ptr().add(16 * c)) };
            amax = _mm512_max_ps(amax, _mm512_abs_ps(*v));
        }
        let amax = _mm512_reduce_max_ps(amax);
        if amax == 0.0 {
            qs.fill(0);
            bsums.fill(0);
            return 0.0;
        }
        // The first value whose magnitude is the largest, with its sign.
        let target = _mm512_set1_ps(amax);
        let mut max = amax;
        for (c, v) in v.iter().enumerate() {
            let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(*v), target);
            if hit != 0 {
                max = xs[16 * c + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127f32 / max;
        let scale = _mm512_set1_ps(iscale);
        let half = _mm512_set1_ps(0.5);
        let one = _mm512_castps_si512(_mm512_set1_ps(1.0));
        let sign = _mm512_set1_epi32(i32::MIN);
        let (lo, hi) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
        for (c, (v, sum)) in v.iter().zip(bsums.iter_mut()).enumerate() {
            let v = _mm512_mul_ps(scale, *v);
            // Round halves away from zero: truncate, then step one away from zero when the
            // (exact) remainder is at least one half.
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let rem = _mm512_abs_ps(_mm512_sub_ps(v, t));
            let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(rem, half);
            let step = _mm512_castsi512_ps(_mm512_or_si512(
                one,
                _mm512_and_si512(_mm512_castps_si512(v), sign),
            ));
            let r = _mm512_mask_add_ps(t, away, t, step);
            let ints = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi));
            *sum = _mm512_reduce_add_epi32(ints) as i16;
            // SAFETY: `qs` has 256 bytes; chunk `c` writes 16 at 16c.
            unsafe {
                _mm_storeu_si128(
                    qs.as_mut_ptr().add(16 * c).cast(),
                    _mm512_cvtepi32_epi8(ints),
                )
            };
        }
        1.0 / iscale
    }

    /// Q4_K: `out[r * stride + i] = w[i] · acts[r]` for the `nw` (≤ [`CHUNK`]) weight rows
    /// of `w` and the `rows` (≤ GROUP) activation rows of `acts`, `kb` blocks each.
    ///
    /// # Safety
    /// The CPU has the enabled features, `w` holds `nw * kb` blocks, `acts` `rows * kb`, and
    /// `out` is writable at those `rows × nw` places.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
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
        let nib = _mm512_set1_epi8(0x0F);
        // 16-bit lane j of a packed pair of dot products covers sub-block A (j % 8 < 4) or B
        // of the 128-bit lane j / 8; lanes 0–1 hold the first 64-value group, 2–3 the second.
        let (lo, hi) = (
            words_from(|j| ((j / 16) * 2 + (j % 8) / 4) as u8),
            words_from(|j| (4 + (j / 16) * 2 + (j % 8) / 4) as u8),
        );
        // SAFETY: 64 readable bytes each.
        let (sc_lo, sc_hi) = unsafe {
            (
                _mm512_loadu_si512(lo.as_ptr().cast()),
                _mm512_loadu_si512(hi.as_ptr().cast()),
            )
        };
        // Only the places the loop writes are read (`finish`): no 8 KB zeroing per call.
        let mut part = [[MaybeUninit::<__m512>::uninit(); CHUNK]; GROUP];
        for i in 0..nw {
            let w = &w[i * kb * Q4K_BYTES..(i + 1) * kb * Q4K_BYTES];
            let mut acc = [_mm512_setzero_ps(); GROUP];
            for b in 0..kb {
                let blk = &w[b * Q4K_BYTES..(b + 1) * Q4K_BYTES];
                prefetch_ahead(blk);
                let d = f16_at(blk, 0);
                let dmin = f16_at(blk, 2);
                // ggml's 6-bit scale/min unpacking: bytes 0..8 scales, 8..16 mins.
                let u =
                    |i: usize| u32::from_le_bytes(blk[4 + 4 * i..8 + 4 * i].try_into().unwrap());
                let (u0, u1, u2) = (u(0), u(1), u(2));
                let s0 = u0 & 0x3f3f_3f3f;
                let s1 = (u2 & 0x0f0f_0f0f) | (((u0 >> 6) & 0x0303_0303) << 4);
                let m0 = u1 & 0x3f3f_3f3f;
                let m1 = ((u2 >> 4) & 0x0f0f_0f0f) | (((u1 >> 6) & 0x0303_0303) << 4);
                let packed = _mm512_castsi128_si512(_mm_set_epi32(
                    m1 as i32, m0 as i32, s1 as i32, s0 as i32,
                ));
                let even = 0x5555_5555_5555_5555;
                let sc01 = _mm512_maskz_permutexvar_epi8(even, sc_lo, packed);
                let sc23 = _mm512_maskz_permutexvar_epi8(even, sc_hi, packed);
                // The 8 mins times dmin, once for every row (the upper lanes zero).
                let mins = _mm512_zextps256_ps512(_mm256_mul_ps(
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(
                        0, 0, m1 as i32, m0 as i32,
                    ))),
                    _mm256_set1_ps(dmin),
                ));
                // SAFETY: the block has 128 bytes of nibbles at 16.
                let (wa, wb) = unsafe {
                    (
                        _mm512_loadu_si512(blk.as_ptr().add(16).cast()),
                        _mm512_loadu_si512(blk.as_ptr().add(80).cast()),
                    )
                };
                let lo0 = _mm512_and_si512(wa, nib);
                let hi0 = _mm512_and_si512(_mm512_srli_epi16::<4>(wa), nib);
                let lo1 = _mm512_and_si512(wb, nib);
                let hi1 = _mm512_and_si512(_mm512_srli_epi16::<4>(wb), nib);
                for r in 0..rows {
                    let a = &acts[r * kb + b];
                    let q = a.qs.as_ptr();
                    // SAFETY: 256 bytes of quants and 8 sub-block sums in `a`.
                    let (x0, x1, x2, x3, sums) = unsafe {
                        (
                            _mm512_loadu_si512(q.cast()),
                            _mm512_loadu_si512(q.add(64).cast()),
                            _mm512_loadu_si512(q.add(128).cast()),
                            _mm512_loadu_si512(q.add(192).cast()),
                            _mm512_zextps256_ps512(_mm256_loadu_ps(a.dsums.as_ptr())),
                        )
                    };
                    let z = _mm512_setzero_si512();
                    let p0 = _mm512_dpbusd_epi32(z, lo0, x0);
                    let p1 = _mm512_dpbusd_epi32(z, hi0, x1);
                    let p2 = _mm512_dpbusd_epi32(z, lo1, x2);
                    let p3 = _mm512_dpbusd_epi32(z, hi1, x3);
                    // Each lane is a sum of 4 products (|·| ≤ 4·15·128), so 16 bits hold it.
                    let s = _mm512_add_epi32(
                        _mm512_madd_epi16(_mm512_packs_epi32(p0, p1), sc01),
                        _mm512_madd_epi16(_mm512_packs_epi32(p2, p3), sc23),
                    );
                    acc[r] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(d * a.d), acc[r]);
                    acc[r] = _mm512_fnmadd_ps(mins, sums, acc[r]);
                }
            }
            for r in 0..rows {
                part[r][i].write(acc[r]);
            }
        }
        // SAFETY: the caller's contract.
        unsafe { finish(&part, rows, nw, out, stride) };
    }

    /// How far ahead of the block being read [`prefetch_ahead`] asks for weights.
    const PF_AHEAD: usize = 2048;

    /// Asks for the weight bytes [`PF_AHEAD`] past `blk` (a block of the row being read, whose
    /// rows follow one another in memory). A decode step reads every weight once from memory;
    /// with the hardware prefetcher alone the output matrix (191 MB of Q6_K) read at ~13.6 GB/s
    /// for one row, with this at ~19 GB/s, 8.5–12.7 ms against 13.1–17.3 (`bench_qgemv`, three
    /// runs alternating; 4096 bytes ahead measured the same). A prefetch never faults, so the
    /// address may run past the matrix.
    #[inline(always)]
    pub(super) fn prefetch_ahead(blk: &[u8]) {
        let ahead = blk.as_ptr().wrapping_add(PF_AHEAD).cast::<i8>();
        for l in 0..blk.len().div_ceil(64) {
            // SAFETY: prefetching is a hint; it reads nothing and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * l)) };
        }
    }

    /// Q6_K: as [`q4k_rows`].
    ///
    /// # Safety
    /// As [`q4k_rows`], with Q6_K blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,f16c")]
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
        let nib = _mm512_set1_epi8(0x0F);
        let top = _mm512_set1_epi8(0x30);
        // Byte j of half h's scale vector: the 128-bit lane L = j / 8 holds sub-blocks 8h + L
        // (values of the first dot product) and 8h + 4 + L (the second).
        let mut idx = [[0u8; 32]; 2];
        for (h, idx) in idx.iter_mut().enumerate() {
            for (j, v) in idx.iter_mut().enumerate() {
                *v = (8 * h + j / 8 + if j % 8 < 4 { 0 } else { 4 }) as u8;
            }
        }
        // SAFETY: 32 readable bytes each.
        let (idx0, idx1) = unsafe {
            (
                _mm256_loadu_si256(idx[0].as_ptr().cast()),
                _mm256_loadu_si256(idx[1].as_ptr().cast()),
            )
        };
        // Only the places the loop writes are read (`finish`): no 8 KB zeroing per call.
        let mut part = [[MaybeUninit::<__m512>::uninit(); CHUNK]; GROUP];
        for i in 0..nw {
            let w = &w[i * kb * Q6K_BYTES..(i + 1) * kb * Q6K_BYTES];
            let mut acc = [_mm512_setzero_ps(); GROUP];
            for b in 0..kb {
                let blk = &w[b * Q6K_BYTES..(b + 1) * Q6K_BYTES];
                prefetch_ahead(blk);
                let d = f16_at(blk, 208);
                // SAFETY: 16 scale bytes at 192.
                let sc = unsafe { _mm_loadu_si128(blk.as_ptr().add(192).cast()) };
                let sc_all = _mm256_cvtepi8_epi16(sc);
                let sc256 = _mm256_castsi128_si256(sc);
                let scs = [
                    _mm512_cvtepi8_epi16(_mm256_permutexvar_epi8(idx0, sc256)),
                    _mm512_cvtepi8_epi16(_mm256_permutexvar_epi8(idx1, sc256)),
                ];
                // The 6-bit values (0..63, the real value minus 32) of each half, as two vectors of
                // 64 values in order.
                let mut ws = [[_mm512_setzero_si512(); 2]; 2];
                for (h, wh) in ws.iter_mut().enumerate() {
                    // SAFETY: 64 bytes of low nibbles at 64h, 32 bytes of high pairs at 128 + 32h.
                    let (ql, qh) = unsafe {
                        (
                            _mm512_loadu_si512(blk.as_ptr().add(64 * h).cast()),
                            _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                blk.as_ptr().add(128 + 32 * h).cast(),
                            )),
                        )
                    };
                    // Values 0..64 take bits 0–1 (first 32) and 2–3 (next 32) of qh as bits 4–5;
                    // values 64..128 take bits 4–5 and 6–7.
                    let ha = _mm512_mask_blend_epi64(
                        0xF0,
                        _mm512_slli_epi16::<4>(qh),
                        _mm512_slli_epi16::<2>(qh),
                    );
                    let hb = _mm512_mask_blend_epi64(0xF0, qh, _mm512_srli_epi16::<2>(qh));
                    wh[0] = _mm512_or_si512(_mm512_and_si512(ql, nib), _mm512_and_si512(ha, top));
                    wh[1] = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(ql), nib),
                        _mm512_and_si512(hb, top),
                    );
                }
                for r in 0..rows {
                    let a = &acts[r * kb + b];
                    let q = a.qs.as_ptr();
                    let z = _mm512_setzero_si512();
                    let mut s = z;
                    for h in 0..2 {
                        // SAFETY: 256 bytes of quants in `a`.
                        let (x0, x1) = unsafe {
                            (
                                _mm512_loadu_si512(q.add(128 * h).cast()),
                                _mm512_loadu_si512(q.add(128 * h + 64).cast()),
                            )
                        };
                        // |lane| ≤ 4·63·128 = 32256: 16 bits hold it.
                        let p = _mm512_packs_epi32(
                            _mm512_dpbusd_epi32(z, ws[h][0], x0),
                            _mm512_dpbusd_epi32(z, ws[h][1], x1),
                        );
                        s = _mm512_add_epi32(s, _mm512_madd_epi16(p, scs[h]));
                    }
                    // The values were stored plus 32: take 32 · scale · (sum of the 16 values).
                    // SAFETY: 16 sums in `a`.
                    let bs = unsafe { _mm256_loadu_si256(a.bsums.as_ptr().cast()) };
                    let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bs, sc_all));
                    let s = _mm512_sub_epi32(s, _mm512_zextsi256_si512(corr));
                    acc[r] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(d * a.d), acc[r]);
                }
            }
            for r in 0..rows {
                part[r][i].write(acc[r]);
            }
        }
        // SAFETY: the caller's contract.
        unsafe { finish(&part, rows, nw, out, stride) };
    }

    /// Weight rows per kernel call: their sums are reduced together ([`finish`]).
    pub(super) const CHUNK: usize = 16;

    /// Stores `out[r * stride + i]` = the sum of the 16 lanes of `part[r][i]`, for `r < rows`
    /// and `i < nw` (the places the kernels wrote).
    ///
    /// The 16 vectors of a row are reduced together, each level adding the even lanes of two
    /// vectors to their odd lanes (two permutes and an add per pair), so 16 sums cost 15
    /// permute pairs where one reduction each cost 4 shuffles and 4 adds (the epilogue was a
    /// fifth of a 6-block weight row's work for 8 rows). Each sum adds its own lanes in the
    /// same tree whatever its slot or its neighbours, so a row's result does not depend on
    /// the rows beside it.
    ///
    /// # Safety
    /// `out` is writable at the `rows × nw` places.
    #[target_feature(enable = "avx512f")]
    unsafe fn finish(
        part: &[[MaybeUninit<__m512>; CHUNK]; GROUP],
        rows: usize,
        nw: usize,
        out: *mut f32,
        stride: usize,
    ) {
        // Lanes 0–7 take the even lanes of the first vector, 8–15 those of the second; `odd`
        // the odd ones.
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        let mask: __mmask16 = if nw >= 16 { 0xFFFF } else { (1u16 << nw) - 1 };
        for (r, vs) in part.iter().enumerate().take(rows) {
            let mut v = [_mm512_setzero_ps(); CHUNK];
            for (v, p) in v.iter_mut().zip(vs).take(nw) {
                // SAFETY: the kernels wrote `part[r][i]` for every `r < rows`, `i < nw`.
                *v = unsafe { p.assume_init() };
            }
            let mut len = CHUNK;
            while len > 1 {
                for p in 0..len / 2 {
                    let (a, b) = (v[2 * p], v[2 * p + 1]);
                    v[p] = _mm512_add_ps(
                        _mm512_permutex2var_ps(a, even, b),
                        _mm512_permutex2var_ps(a, odd, b),
                    );
                }
                len /= 2;
            }
            // SAFETY: the caller's contract; the mask keeps the store to `nw` values.
            unsafe { _mm512_mask_storeu_ps(out.add(r * stride), mask, v[0]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::GgmlType;
    use candle_core::quantized::{QTensor, k_quants};
    use candle_core::{Device, Tensor};

    fn bytes_of(q: &QTensor) -> Vec<u8> {
        q.data().unwrap().to_vec()
    }

    /// The quantizer gives candle's `BlockQ8K::from_float` bytes exactly: random rows, rows
    /// with halves to round, ties of magnitude with both signs, a zero block, tiny values.
    #[test]
    fn activations_are_quantized_exactly_as_candle_does() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI/VBMI and AVX2");
            return;
        }
        let dev = Device::Cpu;
        let mut blocks: Vec<Vec<f32>> = (0..50)
            .map(|i| {
                Tensor::randn(0f32, 1.0 + i as f32, QK_K, &dev)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        // With -127 the largest, the scale is exactly 1: every other value is a half to round
        // (away from zero on both sides).
        let mut halves: Vec<f32> = (0..QK_K).map(|i| (i % 200) as f32 - 100.0 + 0.5).collect();
        halves[3] = -127.0;
        blocks.push(halves);
        let mut tie: Vec<f32> = (0..QK_K).map(|i| (i % 7) as f32 * 0.1).collect();
        tie[9] = -2.5;
        tie[200] = 2.5;
        blocks.push(tie.clone());
        tie[9] = 2.5;
        tie[200] = -2.5;
        blocks.push(tie);
        blocks.push(vec![0.0; QK_K]);
        blocks.push((0..QK_K).map(|i| (i as f32 - 100.0) * 1e-30).collect());
        for (i, xs) in blocks.iter().enumerate() {
            let mut want = [BlockQ8K::zeros()];
            BlockQ8K::from_float(xs, &mut want);
            // SAFETY: BlockQ8K is plain `repr(C)` data of Q8K_BYTES bytes: d, qs, bsums.
            let want: &[u8; Q8K_BYTES] = unsafe { &*(want.as_ptr()).cast() };
            // Every quantizer this CPU runs: AVX2's, and AVX-512's where it has VNNI.
            for vnni in [false, true] {
                if vnni && isa() != Some(Isa::Vnni) {
                    continue;
                }
                let (mut qs, mut bsums) = ([0i8; QK_K], [0i16; 16]);
                // SAFETY: `available()` and `isa()` checked the features above.
                let d = unsafe {
                    if vnni {
                        x86::q8k_block(xs, &mut qs, &mut bsums)
                    } else {
                        avx2::q8k_block(xs, &mut qs, &mut bsums)
                    }
                };
                let mut got = Vec::with_capacity(Q8K_BYTES);
                got.extend_from_slice(&d.to_le_bytes());
                got.extend(qs.iter().map(|&q| q as u8));
                got.extend(bsums.iter().flat_map(|s| s.to_le_bytes()));
                assert_eq!(got.as_slice(), want.as_slice(), "block {i}, vnni {vnni}");
            }
        }
    }

    /// The kernels give what candle's block dot products give (same integers, the per-block
    /// scaling in another order), for every group size, and a row's result does not depend on
    /// the rows beside it.
    #[test]
    fn matches_candles_block_dot_products_and_rows_are_independent() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI/VBMI and AVX2");
            return;
        }
        let dev = Device::Cpu;
        for (n, k) in [(40, 1024), (7, 256), (300, 512)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
                let q = QTensor::quantize(&w, dtype).unwrap();
                let blocks = bytes_of(&q);
                for m in [1, 2, 7, 8, 9, 20] {
                    let x: Vec<f32> = randn_values(m * k);
                    let mut ours = vec![0f32; m * n];
                    assert!(matmul(dtype, &blocks, (m, k, n), &x, &mut ours));
                    let mut want = vec![0f32; m * n];
                    match dtype {
                        GgmlDType::Q4K => {
                            let b: Vec<k_quants::BlockQ4K> = blocks_as(&blocks);
                            k_quants::matmul((m, k, n), &x, &b, &mut want).unwrap();
                        }
                        _ => {
                            let b: Vec<k_quants::BlockQ6K> = blocks_as(&blocks);
                            k_quants::matmul((m, k, n), &x, &b, &mut want).unwrap();
                        }
                    }
                    assert_near_candles(&ours, &want, &format!("{dtype:?} {n}x{k} m={m}"));
                    // Row by row alone: bit for bit what the group gave.
                    for r in 0..m {
                        let mut alone = vec![0f32; n];
                        assert!(matmul(
                            dtype,
                            &blocks,
                            (1, k, n),
                            &x[r * k..(r + 1) * k],
                            &mut alone
                        ));
                        assert_eq!(alone, ours[r * n..(r + 1) * n], "{dtype:?} m={m} row {r}");
                    }
                }
            }
        }
    }

    /// Several matrices by one input (Q4_K and Q6_K mixed, so both layouts of the input): each
    /// result bit for bit what `matmul` gives for that matrix alone; and one matrix it does not
    /// handle declines them all, writing nothing.
    #[test]
    fn many_matrices_at_once_give_each_its_own_product_exactly() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX-512 VNNI/VBMI and AVX2");
            return;
        }
        let dev = Device::Cpu;
        let (m, k) = (9, 512);
        let x: Vec<f32> = randn_values(m * k);
        let specs = [
            (GgmlDType::Q4K, 48),
            (GgmlDType::Q6K, 16),
            (GgmlDType::Q4K, 7),
        ];
        let blocks: Vec<Vec<u8>> = specs
            .iter()
            .map(|&(dtype, n)| {
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                bytes_of(&QTensor::quantize(&w, dtype).unwrap())
            })
            .collect();
        let mats: Vec<_> = specs
            .iter()
            .zip(&blocks)
            .map(|(&(dtype, n), b)| Weights::Blocks(dtype, &b[..], n))
            .collect();
        let mut outs: Vec<Vec<f32>> = specs.iter().map(|&(_, n)| vec![0f32; m * n]).collect();
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
        assert!(matmul_many(&mats, (m, k), &x, &mut refs));
        for (i, &(dtype, n)) in specs.iter().enumerate() {
            let b = &blocks[i];
            let mut alone = vec![0f32; m * n];
            assert!(matmul(dtype, b, (m, k, n), &x, &mut alone));
            assert_eq!(alone, outs[i], "matrix {i}");
        }
        let q8 = vec![0u8; 34 * 2 * 16];
        let mut with_q8 = mats.clone();
        with_q8.push(Weights::Blocks(GgmlDType::Q8_0, &q8[..], 16));
        let mut outs: Vec<Vec<f32>> = with_q8.iter().map(|w| vec![-1f32; m * w.rows()]).collect();
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
        assert!(!matmul_many(&with_q8, (m, k), &x, &mut refs));
        assert!(outs.iter().flatten().all(|&v| v == -1.0), "nothing written");
    }

    /// The Q4_K matrix re-laid by eights gives what candle's block dot products give on the
    /// file's blocks, for decode-step row counts and prompt-sized ones (rows in fours, the
    /// rest after), each row bit for bit what it gets alone; beside a Q6_K matrix in one
    /// `matmul_many`, each result is what it is alone; shapes it does not take are declined.
    #[test]
    fn q4k_by_eights_matches_candles_block_dot_products_and_rows_are_independent() {
        if !avx2_runs() {
            eprintln!("skipped: this CPU lacks AVX2, FMA or F16C");
            return;
        }
        let dev = Device::Cpu;
        for (n, k) in [(8, 256), (48, 1024), (304, 512)] {
            // Weights of mixed magnitudes, so the blocks' scales and mins differ widely.
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev)
                .unwrap()
                .broadcast_mul(&Tensor::rand(0f32, 3.0, (n, 1), &dev).unwrap())
                .unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
            let blocks = bytes_of(&q);
            let eights = Q4kByEights::new(&blocks, n, k).expect("re-laid");
            let b: Vec<k_quants::BlockQ4K> = blocks_as(&blocks);
            for m in [1, 2, 3, 4, 5, 8, 9, 37] {
                let x: Vec<f32> = randn_values(m * k);
                let mut ours = vec![0f32; m * n];
                assert!(matmul_by_eights(&eights, (m, k), &x, &mut ours));
                let mut want = vec![0f32; m * n];
                k_quants::matmul((m, k, n), &x, &b, &mut want).unwrap();
                assert_near_candles(&ours, &want, &format!("{n}x{k} m={m}"));
                for r in 0..m {
                    let mut alone = vec![0f32; n];
                    let row = &x[r * k..(r + 1) * k];
                    assert!(matmul_by_eights(&eights, (1, k), row, &mut alone));
                    assert_eq!(alone, ours[r * n..(r + 1) * n], "{n}x{k} m={m} row {r}");
                }
            }
        }
        // Beside a Q6_K matrix of the file's blocks, in one call.
        let (m, k) = (6, 512);
        let x: Vec<f32> = randn_values(m * k);
        let quantized = |n: usize, dtype| {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            bytes_of(&QTensor::quantize(&w, dtype).unwrap())
        };
        let (q4, q6) = (quantized(24, GgmlDType::Q4K), quantized(16, GgmlDType::Q6K));
        let eights = Q4kByEights::new(&q4, 24, k).expect("re-laid");
        let (mut a, mut b) = (vec![0f32; m * 24], vec![0f32; m * 16]);
        let mats = [
            Weights::Q4kByEights(&eights),
            Weights::Blocks(GgmlDType::Q6K, &q6, 16),
        ];
        assert!(matmul_many(&mats, (m, k), &x, &mut [&mut a, &mut b]));
        let (mut a1, mut b1) = (vec![0f32; m * 24], vec![0f32; m * 16]);
        assert!(matmul_by_eights(&eights, (m, k), &x, &mut a1));
        assert!(matmul(GgmlDType::Q6K, &q6, (m, k, 16), &x, &mut b1));
        assert_eq!((a, b), (a1, b1));
        // Not whole groups of eight rows, not whole blocks, another width.
        assert!(Q4kByEights::new(&q4[..20 * 2 * Q4K_BYTES], 20, k).is_none());
        assert!(Q4kByEights::new(&q4[..100], 24, k).is_none());
        let mut dst = vec![0f32; 24];
        assert!(!matmul_by_eights(&eights, (1, 256), &x[..256], &mut dst));
    }

    #[test]
    fn other_block_types_and_shapes_are_declined() {
        let x = vec![0f32; 256];
        let mut dst = vec![0f32; 1];
        assert!(!matmul(
            GgmlDType::Q8_0,
            &[0; 34 * 8],
            (1, 256, 1),
            &x,
            &mut dst
        ));
        // A length that is not whole blocks for the shape.
        assert!(!matmul(
            GgmlDType::Q4K,
            &[0; 100],
            (1, 256, 1),
            &x,
            &mut dst
        ));
    }

    /// Every value of `ours` within 1e-5 of the largest of candle's (`want`): the same integer
    /// block sums, the per-block scaling in another order.
    fn assert_near_candles(ours: &[f32], want: &[f32], what: &str) {
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (o, w) in ours.iter().zip(want) {
            assert!(
                (o - w).abs() <= 1e-5 * scale,
                "{what}: {o} against candle's {w}"
            );
        }
    }

    /// `len` values from a standard normal distribution.
    fn randn_values(len: usize) -> Vec<f32> {
        Tensor::randn(0f32, 1.0, len, &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn blocks_as<T: Clone>(bytes: &[u8]) -> Vec<T> {
        let size = std::mem::size_of::<T>();
        assert_eq!(bytes.len() % size, 0);
        (0..bytes.len() / size)
            // SAFETY: the bytes came from a QTensor of block type T; read_unaligned copes with
            // the Vec<u8>'s alignment.
            .map(|i| unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(i * size).cast::<T>()) })
            .collect()
    }
}
