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
//! Every sequence is computed by the same code whatever runs beside it, so a sequence's logits
//! do not depend on its company (the scheduler's batching relies on this).

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

/// One sequence's cached keys and values, `[kv heads, cap, dim]` each, of which the first `len`
/// positions (the new token's included) are filled.
pub(crate) struct Cached<'a> {
    pub(crate) k: &'a [f32],
    pub(crate) v: &'a [f32],
    pub(crate) cap: usize,
    pub(crate) len: usize,
}

/// `out[s]` (`[q heads, dim]`) = softmax(`q[s]` · keys × `scale`) · values of sequence `s`, for
/// every sequence. `q` holds the rotated queries, `[sequences, q heads, dim]`.
pub(crate) fn attend(q: &[f32], seqs: &[Cached<'_>], h: Heads, scale: f32, out: &mut [f32]) {
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
    candle_core::utils::barrier_pool().execute_chunked(items, |range| {
        let mut scores = Vec::new();
        let mut acc = vec![0f32; h.dim];
        for item in range {
            let (s, g) = (item / h.kv, item % h.kv);
            let c = &seqs[s];
            let keys = &c.k[g * c.cap * h.dim..][..c.len * h.dim];
            let values = &c.v[g * c.cap * h.dim..][..c.len * h.dim];
            for j in 0..group {
                let head = g * group + j;
                let qh = &q[s * row + head * h.dim..][..h.dim];
                scores.clear();
                scores.extend(keys.chunks_exact(h.dim).map(|k| dot(qh, k) * scale));
                softmax(&mut scores);
                acc.fill(0.0);
                for (p, v) in scores.iter().zip(values.chunks_exact(h.dim)) {
                    for (a, x) in acc.iter_mut().zip(v) {
                        *a += p * x;
                    }
                }
                // SAFETY: `out` has `seqs.len() * row` elements (asserted above) and each
                // (sequence, head) slice is written by exactly one work item.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        (out_addr as *mut f32).add(s * row + head * h.dim),
                        h.dim,
                    )
                };
                dst.copy_from_slice(&acc);
            }
        }
    });
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

    #[test]
    fn attention_matches_the_tensor_formula_per_sequence_and_ignores_its_company()
    -> candle_core::Result<()> {
        let h = Heads {
            q: 4,
            kv: 2,
            dim: 16,
        };
        let cap = 12;
        let lens = [1usize, 7, 12];
        let dev = Device::Cpu;
        let caches: Vec<(Vec<f32>, Vec<f32>)> = (0..lens.len() as u32)
            .map(|s| {
                (
                    values(h.kv * cap * h.dim, 10 + s),
                    values(h.kv * cap * h.dim, 20 + s),
                )
            })
            .collect();
        let q = values(lens.len() * h.q * h.dim, 30);
        let scale = 1.0 / (h.dim as f32).sqrt();
        let seqs: Vec<Cached<'_>> = caches
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
            assert_eq!(alone, together[s * row..(s + 1) * row], "sequence {s}");
            // Against softmax(q k^T * scale) v with candle's tensors (query heads grouped).
            let k = Tensor::from_slice(c.k, (h.kv, cap, h.dim), &dev)?.narrow(1, 0, c.len)?;
            let v = Tensor::from_slice(c.v, (h.kv, cap, h.dim), &dev)?.narrow(1, 0, c.len)?;
            let qs =
                Tensor::from_slice(&q[s * row..(s + 1) * row], (h.kv, h.q / h.kv, h.dim), &dev)?;
            let att = (qs.matmul(&k.t()?.contiguous()?)? * f64::from(scale))?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let want: Vec<f32> = att.matmul(&v.contiguous()?)?.flatten_all()?.to_vec1()?;
            let got = &together[s * row..(s + 1) * row];
            let worst = want
                .iter()
                .zip(got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "sequence {s}: off by {worst}");
        }
        Ok(())
    }
}
