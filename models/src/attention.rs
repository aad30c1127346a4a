//! Pieces of attention shared by the chat decoder and Whisper's decoder.

use candle_core::{Device, Result, Tensor};

/// Causal mask `[n, offset + n]` for `n` new positions after `offset` cached ones: 0 where
/// query `i` (at `offset + i`) may attend, -inf after it.
pub(crate) fn causal_mask(n: usize, offset: usize, device: &Device) -> Result<Tensor> {
    let total = offset + n;
    let m: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(m, (n, total), device)
}
