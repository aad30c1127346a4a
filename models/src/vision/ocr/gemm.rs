//! Dense 2-D convolution as a packed matrix product with our own micro-kernels.
//!
//! Why our own: on the recognizer, tract's convolutions ran at 40–50 GFLOP/s on one core of the
//! dev machine's Xeon while onnxruntime's (MLAS, AVX-512) ran the same 1×1 convolutions at
//! 110–150 GFLOP/s, and tract's `Im2col` of the 3×3 stem convolutions materialised buffers of up
//! to 88 MB per batch (50 ms for one node). The `gemm` crate that candle uses reached 60–80
//! GFLOP/s here: on stable Rust it stops at AVX2. Measured with `models/examples` throwaway
//! harnesses beside `onnxruntime` in the same run (the figures are in the closing note of #11).
//! And on CPUs without AVX-512, tract 0.22.5's own matmul (its AVX2 `fma_mmm_f32_16x5` kernel,
//! on the path it takes when the pixel axes are not contiguous) returned wrong values for the
//! detector's 1×1 convolutions (`IHW,OI->OHW` and `IHW,OI->NOHW` einsums) on portrait inputs
//! (96×34×16, 192×34×16): a page photographed sideways read as nothing. So every CPU runs these kernels: AVX-512, AVX2 with FMA, or plain
//! Rust that the compiler vectorises.
//!
//! The product is `out[o][p] = bias[o] + Σ_k w[o][k] · x̂[k][p]`, where `p` runs over output
//! pixels and `x̂` is the im2col matrix of the input, never built whole: it is packed on the fly
//! into panels of [`NR`] pixels (the taps read with padding as zeros) that stay in L2 while every
//! block of [`MR`] output channels runs over them. A tile adds the taps in order after the bias,
//! so a pixel's result does not depend on the tiling or the thread that computed it (the AVX-512
//! kernel keeps its 12×32 sums in 24 zmm registers; the AVX2 one, with 16 ymm registers, runs the
//! tile as four 6×16 quarters).

use rayon::prelude::*;

/// Output channels per micro-tile.
pub(crate) const MR: usize = 12;
/// Output pixels per micro-tile (two 16-lane zmm registers).
pub(crate) const NR: usize = 32;

/// Below this many multiply-adds a convolution runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 22;

/// The micro-kernel this CPU runs.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Avx512,
    Avx2,
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(crate) fn detect() -> Self {
        [Self::Avx512, Self::Avx2]
            .into_iter()
            .find(|k| k.runs_here())
            .unwrap_or(Self::Portable)
    }

    /// Whether this CPU has what the kernel needs.
    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Avx512 => std::is_x86_feature_detected!("avx512f"),
                Self::Avx2 => {
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
                }
                Self::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Self::Portable
        }
    }
}

/// The geometry of one convolution: NCHW input, OIHW kernel, group 1, no dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Geometry {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sy: usize,
    pub sx: usize,
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    fn depth(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    fn pixels(&self) -> usize {
        self.oh * self.ow
    }
    /// A 1×1, stride-1, unpadded convolution reads its panels straight from the input rows.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sy == 1 && self.sx == 1 && self.pt == 0 && self.pl == 0
    }
}

/// Weights packed for the micro-kernel: blocks of [`MR`] output channels, each `depth × MR`
/// (channel fastest), rows past `cout` zero; and the bias padded the same way.
#[derive(Debug, Clone)]
pub(crate) struct Packed {
    depth: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Packed {
    /// `kernel` is OIHW (`cout × depth`), `bias` has `cout` values or one shared value.
    pub(crate) fn new(kernel: &[f32], bias: &[f32], cout: usize, depth: usize) -> Self {
        assert_eq!(kernel.len(), cout * depth, "kernel is cout × depth");
        let blocks = cout.div_ceil(MR);
        let mut weights = vec![0f32; blocks * depth * MR];
        for o in 0..cout {
            let (b, i) = (o / MR, o % MR);
            let block = &mut weights[b * depth * MR..][..depth * MR];
            for (k, &v) in kernel[o * depth..][..depth].iter().enumerate() {
                block[k * MR + i] = v;
            }
        }
        let mut padded = vec![0f32; blocks * MR];
        for (o, slot) in padded.iter_mut().enumerate().take(cout) {
            *slot = if bias.len() == 1 { bias[0] } else { bias[o] };
        }
        Self {
            depth,
            weights,
            bias: padded,
        }
    }
}

/// The output pointer shared by the threads; each writes only its own panels' columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tiles write disjoint (row, column) ranges of one buffer that outlives the parallel loop.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// Through a method, so closures capture the whole `Out` (which is `Sync`), not its field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Convolves `batch` NCHW images `x` into `out` (`batch × cout × oh × ow`) with the best
/// kernel this CPU runs.
///
/// Panics if the slices do not match `g`.
pub(crate) fn conv(g: &Geometry, packed: &Packed, batch: usize, x: &[f32], out: &mut [f32]) {
    conv_with(Kernel::detect(), g, packed, batch, x, out)
}

/// [`conv`] with a given kernel; panics if this CPU cannot run it.
pub(crate) fn conv_with(
    kernel: Kernel,
    g: &Geometry,
    packed: &Packed,
    batch: usize,
    x: &[f32],
    out: &mut [f32],
) {
    assert!(kernel.runs_here(), "{kernel:?} kernel on a CPU without it");
    let tile: Tile = match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => tile_avx512,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => tile_avx2,
        _ => tile_portable,
    };
    let (depth, pixels) = (g.depth(), g.pixels());
    assert_eq!(packed.depth, depth);
    assert_eq!(x.len(), batch * g.cin * g.h * g.w);
    assert_eq!(out.len(), batch * g.cout * pixels);
    let panels = pixels.div_ceil(NR);
    let dst = Out(out.as_mut_ptr());
    let run = |buf: &mut Vec<f32>, job: usize| {
        let _flush = FlushDenormals::new();
        let (n, panel) = (job / panels, job % panels);
        let p0 = panel * NR;
        let cols = NR.min(pixels - p0);
        let image = &x[n * g.cin * g.h * g.w..][..g.cin * g.h * g.w];
        pack_panel(g, image, p0, cols, buf);
        let base = n * g.cout * pixels + p0;
        for (b, (a, bias)) in packed
            .weights
            .chunks_exact(depth * MR)
            .zip(packed.bias.chunks_exact(MR))
            .enumerate()
        {
            let rows = MR.min(g.cout - b * MR);
            // SAFETY: the CPU runs the kernel (asserted above); `a` holds depth·MR and `buf`
            // depth·NR values; the tile's rows·cols outputs start at `base + b·MR·pixels`, stay
            // inside `out` (rows ≤ cout − b·MR, cols ≤ pixels − p0), and no other job writes them.
            unsafe {
                tile(
                    depth,
                    a.as_ptr(),
                    buf.as_ptr(),
                    bias.as_ptr(),
                    dst.at(base + b * MR * pixels),
                    pixels,
                    rows,
                    cols,
                )
            };
        }
    };
    let jobs = batch * panels;
    let new_buf = || vec![0f32; depth * NR];
    if batch * g.cout * pixels * depth >= PARALLEL_MIN_MACS {
        (0..jobs)
            .into_par_iter()
            .for_each_init(new_buf, |buf, job| run(buf, job));
    } else {
        let mut buf = new_buf();
        (0..jobs).for_each(|job| run(&mut buf, job));
    }
}

/// Subnormal operands take a microcode assist of about a hundred cycles on every FMA that meets
/// them, and the detector's deep activations are mostly subnormal on a plain background (64% of
/// one 768-channel input on the benchmark line image): that convolution took 150 ms instead of
/// 4. While this guard lives, the thread treats subnormal inputs and results as zero (MXCSR DAZ
/// and FTZ), which changes no value above 1.2e-38; the previous mode is restored on drop.
struct FlushDenormals(#[cfg(target_arch = "x86_64")] u32);

impl FlushDenormals {
    fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // `_mm_getcsr`/`_mm_setcsr` are deprecated in favour of inline assembly because
            // changing the mode behind the compiler's back can break constant folding of code
            // that runs meanwhile; only the kernel's own loads and FMAs run under this guard.
            #[allow(deprecated)]
            // SAFETY: reading and writing MXCSR with SSE present (baseline on x86-64).
            let old = unsafe { std::arch::x86_64::_mm_getcsr() };
            #[allow(deprecated)]
            unsafe {
                std::arch::x86_64::_mm_setcsr(old | 0x8040)
            };
            Self(old)
        }
        #[cfg(not(target_arch = "x86_64"))]
        Self()
    }
}

impl Drop for FlushDenormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        #[allow(deprecated)]
        // SAFETY: restores the mode read in `new`.
        unsafe {
            std::arch::x86_64::_mm_setcsr(self.0)
        };
    }
}

/// Packs `x̂[k][p0 .. p0 + cols]` for every tap `k = (c, ky, kx)` into `buf` (`depth × NR`),
/// zeros where a tap falls in the padding or past the last pixel.
fn pack_panel(g: &Geometry, x: &[f32], p0: usize, cols: usize, buf: &mut [f32]) {
    if g.pointwise() {
        for (c, dst) in buf.chunks_exact_mut(NR).enumerate() {
            dst[..cols].copy_from_slice(&x[c * g.h * g.w + p0..][..cols]);
            dst[cols..].fill(0.0);
        }
        return;
    }
    // The panel's pixels as runs along one output row: (first column in the panel, end, output
    // row, first output column). A panel of 32 pixels spans one to a few rows.
    let mut runs = [(0usize, 0usize, 0usize, 0usize); NR];
    let mut nruns = 0;
    let mut j = 0;
    while j < cols {
        let (oy, ox) = ((p0 + j) / g.ow, (p0 + j) % g.ow);
        let end = (j + g.ow - ox).min(cols);
        runs[nruns] = (j, end, oy, ox);
        nruns += 1;
        j = end;
    }
    let mut rows = buf.chunks_exact_mut(NR);
    for c in 0..g.cin {
        let plane = &x[c * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let dst = rows.next().expect("depth rows");
                dst[cols..].fill(0.0);
                for &(j0, j1, oy, ox0) in &runs[..nruns] {
                    let dst = &mut dst[j0..j1];
                    // Padded input coordinates: inside the image when pad ≤ y < pad + size.
                    let y = oy * g.sy + ky;
                    if y < g.pt || y >= g.pt + g.h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[(y - g.pt) * g.w..][..g.w];
                    // Output columns ox0 + i whose input column (ox0 + i)·sx + kx − pl is inside.
                    let x0 = ox0 * g.sx + kx;
                    let first = g.pl.saturating_sub(x0).div_ceil(g.sx).min(dst.len());
                    let last = if x0 < g.pl + g.w {
                        ((g.pl + g.w - 1 - x0) / g.sx + 1).min(dst.len())
                    } else {
                        0
                    }
                    .max(first);
                    dst[..first].fill(0.0);
                    dst[last..].fill(0.0);
                    let start = x0 + first * g.sx - g.pl;
                    let inside = &mut dst[first..last];
                    if g.sx == 1 {
                        inside.copy_from_slice(&src[start..start + inside.len()]);
                    } else {
                        for (d, v) in inside.iter_mut().zip(src[start..].iter().step_by(g.sx)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// One `rows × cols` tile (at most MR × NR): `out[i][j] = bias[i] + Σ_k a[k][i] · b[k][j]`.
///
/// # Safety
/// The CPU runs the kernel; `a` points to `depth·MR`, `b` to `depth·NR`, `bias` to MR values;
/// `out` row `i < rows` has `cols` writable values at `out + i·ld`.
type Tile = unsafe fn(usize, *const f32, *const f32, *const f32, *mut f32, usize, usize, usize);

/// [`Tile`] with AVX-512F: the whole tile in 24 zmm accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512(
    depth: usize,
    a: *const f32,
    b: *const f32,
    bias: *const f32,
    out: *mut f32,
    ld: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): every pointer offset stays inside the ranges the caller guarantees.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for (i, r) in acc.iter_mut().enumerate() {
            let v = _mm512_set1_ps(*bias.add(i));
            *r = [v, v];
        }
        for k in 0..depth {
            let b0 = _mm512_loadu_ps(b.add(k * NR));
            let b1 = _mm512_loadu_ps(b.add(k * NR + 16));
            let ak = a.add(k * MR);
            for (i, r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ak.add(i));
                r[0] = _mm512_fmadd_ps(av, b0, r[0]);
                r[1] = _mm512_fmadd_ps(av, b1, r[1]);
            }
        }
        let lanes = |n: usize| -> __mmask16 { if n >= 16 { 0xffff } else { (1u16 << n) - 1 } };
        let (m0, m1) = (lanes(cols), lanes(cols.saturating_sub(16)));
        for (i, r) in acc.iter().enumerate().take(rows) {
            let row = out.add(i * ld);
            _mm512_mask_storeu_ps(row, m0, r[0]);
            if m1 != 0 {
                _mm512_mask_storeu_ps(row.add(16), m1, r[1]);
            }
        }
    }
}

/// Rows and columns of a quarter tile in the AVX2 and portable kernels: 6×16 sums are 12 ymm
/// registers, which leaves two for the panel's row and one for the broadcast weight.
const QR: usize = MR / 2;
const QC: usize = NR / 2;

/// [`Tile`] with AVX2 and FMA, a quarter of the tile at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    depth: usize,
    a: *const f32,
    b: *const f32,
    bias: *const f32,
    out: *mut f32,
    ld: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    // Stores the first `n` (0..=8) lanes of `v` at `dst`.
    #[target_feature(enable = "avx2")]
    unsafe fn store(dst: *mut f32, v: __m256, n: usize) {
        // SAFETY: the caller has `n` writable values at `dst`.
        unsafe {
            if n >= 8 {
                _mm256_storeu_ps(dst, v);
            } else if n > 0 {
                let mask = _mm256_cmpgt_epi32(
                    _mm256_set1_epi32(n as i32),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                );
                _mm256_maskstore_ps(dst, mask, v);
            }
        }
    }
    // SAFETY (whole body): every pointer offset stays inside the ranges the caller guarantees
    // (quarters past `rows` or `cols` are computed from the zero padding and not stored).
    unsafe {
        for r0 in (0..rows).step_by(QR) {
            for c0 in (0..cols).step_by(QC) {
                let mut acc = [[_mm256_setzero_ps(); 2]; QR];
                for (i, r) in acc.iter_mut().enumerate() {
                    let v = _mm256_set1_ps(*bias.add(r0 + i));
                    *r = [v, v];
                }
                for k in 0..depth {
                    let bk = b.add(k * NR + c0);
                    let (b0, b1) = (_mm256_loadu_ps(bk), _mm256_loadu_ps(bk.add(8)));
                    let ak = a.add(k * MR + r0);
                    for (i, r) in acc.iter_mut().enumerate() {
                        let av = _mm256_broadcast_ss(&*ak.add(i));
                        r[0] = _mm256_fmadd_ps(av, b0, r[0]);
                        r[1] = _mm256_fmadd_ps(av, b1, r[1]);
                    }
                }
                let n = (cols - c0).min(QC);
                for (i, r) in acc.iter().enumerate().take(rows - r0) {
                    let row = out.add((r0 + i) * ld + c0);
                    store(row, r[0], n.min(8));
                    store(row.add(8), r[1], n.saturating_sub(8));
                }
            }
        }
    }
}

/// [`Tile`] in plain Rust, for any CPU: the same quarters as the AVX2 kernel, in arrays the
/// compiler keeps in vector registers (multiply then add: without FMA hardware, `mul_add` would
/// be a library call per value).
#[allow(clippy::too_many_arguments)]
unsafe fn tile_portable(
    depth: usize,
    a: *const f32,
    b: *const f32,
    bias: *const f32,
    out: *mut f32,
    ld: usize,
    rows: usize,
    cols: usize,
) {
    // SAFETY: the caller guarantees these lengths.
    let (a, b, bias) = unsafe {
        (
            std::slice::from_raw_parts(a, depth * MR),
            std::slice::from_raw_parts(b, depth * NR),
            std::slice::from_raw_parts(bias, MR),
        )
    };
    for r0 in (0..rows).step_by(QR) {
        for c0 in (0..cols).step_by(QC) {
            let mut acc = [[0f32; QC]; QR];
            for (r, &v) in acc.iter_mut().zip(&bias[r0..r0 + QR]) {
                *r = [v; QC];
            }
            for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
                let bk: &[f32; QC] = bk[c0..c0 + QC].try_into().expect("a quarter row");
                for (r, &w) in acc.iter_mut().zip(&ak[r0..r0 + QR]) {
                    for (s, &x) in r.iter_mut().zip(bk) {
                        *s += w * x;
                    }
                }
            }
            let n = (cols - c0).min(QC);
            for (i, r) in acc.iter().enumerate().take(rows - r0) {
                // SAFETY: row r0 + i < rows has cols writable values; c0 + n ≤ cols.
                let row = unsafe { std::slice::from_raw_parts_mut(out.add((r0 + i) * ld + c0), n) };
                row.copy_from_slice(&r[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution written the obvious way.
    fn reference(g: &Geometry, k: &[f32], bias: &[f32], x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; g.cout * g.pixels()];
        for o in 0..g.cout {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut s = bias[o];
                    for c in 0..g.cin {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let (y, xx) = (oy * g.sy + ky, ox * g.sx + kx);
                                if y < g.pt || y >= g.pt + g.h || xx < g.pl || xx >= g.pl + g.w {
                                    continue;
                                }
                                s += k[((o * g.cin + c) * g.kh + ky) * g.kw + kx]
                                    * x[(c * g.h + y - g.pt) * g.w + xx - g.pl];
                            }
                        }
                    }
                    out[(o * g.oh + oy) * g.ow + ox] = s;
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Every kernel this CPU runs (the portable one runs everywhere).
    fn kernels_here() -> Vec<Kernel> {
        [Kernel::Avx512, Kernel::Avx2, Kernel::Portable]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect()
    }

    #[test]
    fn every_kernel_matches_the_definition_on_edges_strides_and_padding() {
        for kernel in kernels_here() {
            check_kernel(kernel);
        }
    }

    fn check_kernel(kernel: Kernel) {
        // Channel counts off the 12-row tiles, pixel counts off the 32-column panels,
        // pointwise and 3×3 with stride 2 and padding, 2×2 with asymmetric padding.
        for (cin, cout, h, w, kh, sy, pt, pb) in [
            (5, 13, 7, 9, 1, 1, 0, 0),
            (16, 24, 6, 11, 1, 1, 0, 0),
            (3, 7, 9, 13, 3, 2, 1, 1),
            (4, 25, 10, 35, 3, 1, 1, 1),
            (6, 12, 8, 8, 2, 1, 0, 1),
        ] {
            let oh = (h + pt + pb - kh) / sy + 1;
            let ow = (w + pt + pb - kh) / sy + 1;
            let g = Geometry {
                cin,
                cout,
                h,
                w,
                kh,
                kw: kh,
                sy,
                sx: sy,
                pt,
                pl: pt,
                oh,
                ow,
            };
            let k = values(cout * cin * kh * kh, 7);
            let bias = values(cout, 11);
            let batch = 2;
            let x = values(batch * cin * h * w, 3);
            let mut out = vec![f32::NAN; batch * cout * oh * ow];
            conv_with(
                kernel,
                &g,
                &Packed::new(&k, &bias, cout, cin * kh * kh),
                batch,
                &x,
                &mut out,
            );
            for n in 0..batch {
                let want = reference(&g, &k, &bias, &x[n * cin * h * w..][..cin * h * w]);
                let got = &out[n * cout * oh * ow..][..cout * oh * ow];
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{kernel:?} {g:?} n={n} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
