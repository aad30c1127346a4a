//! A llama-family decoder (llama/SmolLM2, qwen2, qwen3) over quantized GGUF weights, written for
//! serving on a CPU with little memory to spare.
//!
//! candle-transformers' stock quantized models dequantize the token embedding to f32 (0.9 GB
//! for a 150k-token vocabulary), grow the KV cache by concatenation (a full copy per token) and
//! multiply through candle's repacked kernels, which keep a wider copy of every Q4_K matrix
//! beside the file's blocks. Here the embedding stays quantized and, when the model ties it to
//! the output projection, one copy serves both; the KV cache is a buffer written in place,
//! which can also be rewound so the next turn of a conversation reuses its prompt; grouped-query
//! attention reshapes the queries instead of repeating keys and values. One-token steps always
//! run ggml-style block dot products straight on the GGUF blocks (`k_quants::matmul`); prompts
//! do too with [`CpuPrefill::Compact`], or take candle's faster repacked kernels with
//! [`CpuPrefill::Repacked`] at the cost of the second copy.

use std::io::{Read, Seek};
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::k_quants::{
    self, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K,
    BlockQ6K, BlockQ8_0, BlockQ8K, GgmlType,
};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, IndexOp, Module, Result, Storage, Tensor, bail};

/// Which layout of the llama family a GGUF file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// Llama, SmolLM2, Mistral-style: interleaved RoPE, no biases.
    Llama,
    /// Qwen2/Qwen2.5: NeoX RoPE, biases on q/k/v.
    Qwen2,
    /// Qwen3: NeoX RoPE, RMS norm on each query and key head.
    Qwen3,
}

impl Family {
    pub(crate) fn from_arch(arch: &str) -> Option<Self> {
        match arch {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            _ => None,
        }
    }
}

/// Which CPU kernels multiply a prompt (several positions at once) by the weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuPrefill {
    /// candle's tiled kernels: about 2.5× faster prompt processing, but candle keeps a
    /// re-laid-out copy of each matrix beside the file's blocks (about +1 GB for a 1.5B Q4_K_M
    /// model).
    #[default]
    Repacked,
    /// The same block dot products as generation: weights held once, at their file size.
    Compact,
}

/// A quantized weight matrix `[out, in]` with an optional bias.
struct QLinear {
    weight: Arc<QTensor>,
    /// candle's own path: prompts with [`CpuPrefill::Repacked`], other devices, and block
    /// types without a dot product here.
    candle: QMatMul,
    bias: Option<Tensor>,
    prefill: CpuPrefill,
}

impl QLinear {
    fn new(weight: Arc<QTensor>, bias: Option<Tensor>, prefill: CpuPrefill) -> Result<Self> {
        Ok(Self {
            candle: QMatMul::from_arc(weight.clone())?,
            weight,
            bias,
            prefill,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.elem_count() / x.dim(D::Minus1)?.max(1);
        let direct = if rows > 1 && self.prefill == CpuPrefill::Repacked {
            None
        } else {
            cpu_matmul(&self.weight, x)?
        };
        let y = match direct {
            Some(y) => y,
            None => self.candle.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// `x @ w.T` on the CPU with ggml's block dot products, reading the weight blocks where they
/// lie. None when the tensor is not on the CPU or its block type has no dot product here.
fn cpu_matmul(w: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let x = x.contiguous()?;
    let mut out_dims = x.dims().to_vec();
    match out_dims.last_mut() {
        Some(last) if *last == k => *last = n,
        _ => bail!("matmul: input {:?} does not end in {k}", x.dims()),
    }
    let m = x.elem_count() / k;
    let data = w.data()?;
    let (guard, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*guard else {
        return Ok(None);
    };
    let lhs = &cpu.as_slice::<f32>()?[layout.start_offset()..][..m * k];
    let mut dst = vec![0f32; m * n];
    let mkn = (m, k, n);
    let done = match w.dtype() {
        GgmlDType::Q4_0 => run::<BlockQ4_0>(mkn, lhs, &data, &mut dst)?,
        GgmlDType::Q4_1 => run::<BlockQ4_1>(mkn, lhs, &data, &mut dst)?,
        GgmlDType::Q5_0 => run::<BlockQ5_0>(mkn, lhs, &data, &mut dst)?,
        GgmlDType::Q5_1 => run::<BlockQ5_1>(mkn, lhs, &data, &mut dst)?,
        GgmlDType::Q8_0 => run::<BlockQ8_0>(mkn, lhs, &data, &mut dst)?,
        GgmlDType::Q2K => run::<BlockQ2K>(mkn, lhs, &data, &mut dst)?,
        GgmlDType::Q3K => run::<BlockQ3K>(mkn, lhs, &data, &mut dst)?,
        GgmlDType::Q4K => run::<BlockQ4K>(mkn, lhs, &data, &mut dst)?,
        GgmlDType::Q5K => run::<BlockQ5K>(mkn, lhs, &data, &mut dst)?,
        GgmlDType::Q6K => run::<BlockQ6K>(mkn, lhs, &data, &mut dst)?,
        GgmlDType::Q8K => run::<BlockQ8K>(mkn, lhs, &data, &mut dst)?,
        GgmlDType::F32 => run::<f32>(mkn, lhs, &data, &mut dst)?,
        _ => false,
    };
    drop(guard);
    if !done {
        return Ok(None);
    }
    Tensor::from_vec(dst, out_dims, &Device::Cpu).map(Some)
}

/// Runs `k_quants::matmul` over `bytes` viewed as blocks of `T`. False when the bytes are not
/// laid out as whole, aligned blocks (then the caller takes candle's path).
fn run<T: GgmlType>(
    (m, k, n): (usize, usize, usize),
    lhs: &[f32],
    bytes: &[u8],
    dst: &mut [f32],
) -> Result<bool> {
    let size = std::mem::size_of::<T>();
    if !k.is_multiple_of(T::BLCK_SIZE)
        || bytes.len() != n * (k / T::BLCK_SIZE) * size
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return Ok(false);
    }
    // SAFETY: a CPU QTensor's bytes are the memory of a `Vec<T>` for its block type `T`
    // (checked through `dtype()` by the caller): the length is a whole number of blocks and the
    // pointer is aligned for `T` (both checked above), the blocks are plain `repr(C)` data,
    // and `bytes` outlives the slice.
    let blocks =
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) };
    k_quants::matmul((m, k, n), lhs, blocks, dst)?;
    Ok(true)
}

/// Keys and values of one layer, in a buffer that grows by whole chunks and is written in place.
struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    cap: usize,
}

/// Positions added to the KV buffer each time it fills.
const KV_CHUNK: usize = 512;

impl KvCache {
    fn new() -> Self {
        Self {
            k: None,
            v: None,
            len: 0,
            cap: 0,
        }
    }

    /// Forgets everything after the first `len` positions (the buffer is kept for reuse).
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `k`, `v` (`[b, kv_heads, l, head_dim]`) and returns views of everything cached.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let l = k.dim(2)?;
        if self.len + l > self.cap || self.k.is_none() {
            let cap = (self.len + l).div_ceil(KV_CHUNK) * KV_CHUNK;
            let (b, h, _, d) = k.dims4()?;
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let t = Tensor::zeros((b, h, cap, d), k.dtype(), k.device())?;
                if let Some(old) = old
                    && self.len > 0
                {
                    t.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
                Ok(t)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
            self.cap = cap;
        }
        let (kc, vc) = (
            self.k.as_ref().expect("grown"),
            self.v.as_ref().expect("grown"),
        );
        kc.slice_set(&k.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += l;
        Ok((kc.narrow(2, 0, self.len)?, vc.narrow(2, 0, self.len)?))
    }
}

struct Layer {
    attn_norm: Tensor,
    q: QLinear,
    k: QLinear,
    v: QLinear,
    o: QLinear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate: QLinear,
    up: QLinear,
    down: QLinear,
    kv: KvCache,
}

/// The model: weights, RoPE tables and KV caches.
pub(crate) struct QDecoder {
    embed: Arc<QTensor>,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QLinear,
    cos: Tensor,
    sin: Tensor,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    eps: f32,
    neox: bool,
    max_positions: usize,
}

impl QDecoder {
    /// Reads the weights of `family` from an opened GGUF file. `max_positions` bounds the RoPE
    /// tables (the usable context).
    pub(crate) fn from_gguf<R: Read + Seek>(
        family: Family,
        ct: &Content,
        r: &mut R,
        device: &Device,
        max_positions: usize,
        prefill: CpuPrefill,
    ) -> Result<Self> {
        let arch = match family {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        };
        let md_u32 = |key: &str| -> Result<usize> {
            match ct.metadata.get(&format!("{arch}.{key}")) {
                Some(v) => Ok(v.to_u32()? as usize),
                None => bail!("GGUF metadata lacks {arch}.{key}"),
            }
        };
        let md_f32 = |key: &str| -> Option<f32> {
            ct.metadata
                .get(&format!("{arch}.{key}"))
                .and_then(|v| v.to_f32().ok())
        };
        if md_u32("expert_count").unwrap_or(0) > 0 {
            bail!("mixture-of-experts models are not supported");
        }
        let n_head = md_u32("attention.head_count")?;
        let n_kv_head = md_u32("attention.head_count_kv")?;
        let hidden = md_u32("embedding_length")?;
        let n_layer = md_u32("block_count")?;
        let head_dim = md_u32("attention.key_length").unwrap_or(hidden / n_head.max(1));
        let rope_dim = md_u32("rope.dimension_count").unwrap_or(head_dim);
        if n_head == 0 || n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
            bail!("bad head counts: {n_head} query heads, {n_kv_head} key/value heads");
        }
        if rope_dim != head_dim {
            bail!("partial rotary embeddings ({rope_dim} of {head_dim}) are not supported");
        }
        let eps = md_f32("attention.layer_norm_rms_epsilon").unwrap_or(1e-6);
        let theta = md_f32("rope.freq_base").unwrap_or(10_000.0);

        let has = |name: &str| ct.tensor_infos.contains_key(name);
        let mut get =
            |name: &str| -> Result<Arc<QTensor>> { Ok(Arc::new(ct.tensor(r, name, device)?)) };
        let embed = get("token_embd.weight")?;
        let output = if has("output.weight") {
            get("output.weight")?
        } else {
            embed.clone() // tied embeddings: one copy serves both
        };
        let norm = get("output_norm.weight")?.dequantize(device)?;
        let mut layers = Vec::with_capacity(n_layer);
        for i in 0..n_layer {
            let p = format!("blk.{i}");
            let mut dense = |w: &str| get(&format!("{p}.{w}.weight"))?.dequantize(device);
            let attn_norm = dense("attn_norm")?;
            let ffn_norm = dense("ffn_norm")?;
            let (q_norm, k_norm) = if family == Family::Qwen3 {
                (Some(dense("attn_q_norm")?), Some(dense("attn_k_norm")?))
            } else {
                (None, None)
            };
            let mut lin = |w: &str| -> Result<QLinear> {
                let weight = get(&format!("{p}.{w}.weight"))?;
                let bias_name = format!("{p}.{w}.bias");
                let bias = if has(&bias_name) {
                    Some(get(&bias_name)?.dequantize(device)?)
                } else {
                    None
                };
                QLinear::new(weight, bias, prefill)
            };
            layers.push(Layer {
                attn_norm,
                ffn_norm,
                q: lin("attn_q")?,
                k: lin("attn_k")?,
                v: lin("attn_v")?,
                o: lin("attn_output")?,
                gate: lin("ffn_gate")?,
                up: lin("ffn_up")?,
                down: lin("ffn_down")?,
                q_norm,
                k_norm,
                kv: KvCache::new(),
            });
        }
        let (cos, sin) = rope_tables(head_dim, theta, max_positions, device)?;
        Ok(Self {
            output: QLinear::new(output, None, prefill)?,
            embed,
            layers,
            norm,
            cos,
            sin,
            n_head,
            n_kv_head,
            head_dim,
            eps,
            // llama.cpp's rope types: llama is NORM (interleaved pairs), qwen is NEOX.
            neox: family != Family::Llama,
            max_positions,
        })
    }

    /// Keeps the keys and values of the first `len` positions only.
    pub(crate) fn truncate_kv(&mut self, len: usize) {
        for l in &mut self.layers {
            l.kv.truncate(len);
        }
    }

    /// Feeds `ids` (`[1, l]`) at position `pos` and returns the logits of the last position
    /// (`[1, vocab]`).
    pub(crate) fn forward(&mut self, ids: &Tensor, pos: usize) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        if pos + l > self.max_positions {
            bail!(
                "position {} is past the context of {}",
                pos + l,
                self.max_positions
            );
        }
        let mut x = self.embed.embedding(ids)?;
        let mask = if l > 1 {
            Some(crate::attention::causal_mask(l, pos, x.device())?)
        } else {
            None
        };
        let cos = self.cos.narrow(0, pos, l)?;
        let sin = self.sin.narrow(0, pos, l)?;
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        for layer in &mut self.layers {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.eps)?;
            let mut q = layer.q.forward(&h)?.reshape((b, l, nh, hd))?;
            let mut k = layer.k.forward(&h)?.reshape((b, l, nkv, hd))?;
            let v = layer.v.forward(&h)?.reshape((b, l, nkv, hd))?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = candle_nn::ops::rms_norm(&q, qn, self.eps)?;
                k = candle_nn::ops::rms_norm(&k, kn, self.eps)?;
            }
            let rope = |t: Tensor| -> Result<Tensor> {
                let t = t.transpose(1, 2)?.contiguous()?;
                if self.neox {
                    candle_nn::rotary_emb::rope(&t, &cos, &sin)
                } else {
                    candle_nn::rotary_emb::rope_i(&t, &cos, &sin)
                }
            };
            let q = rope(q)?; // [b, nh, l, hd]
            let k = rope(k)?; // [b, nkv, l, hd]
            let v = v.transpose(1, 2)?;
            let (k, v) = layer.kv.append(&k, &v)?; // [b, nkv, t, hd]
            let t = k.dim(2)?;
            // Query heads that share a key/value head become rows of one product.
            let q = q.reshape((b, nkv, group * l, hd))?;
            let mut att = (q.matmul(&k.t()?)? * scale)?;
            if let Some(mask) = &mask {
                att = att
                    .reshape((b, nkv, group, l, t))?
                    .broadcast_add(mask)?
                    .reshape((b, nkv, group * l, t))?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att
                .matmul(&v)?
                .reshape((b, nh, l, hd))?
                .transpose(1, 2)?
                .reshape((b, l, nh * hd))?;
            x = (layer.o.forward(&y)? + x)?;

            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.eps)?;
            let g = layer.gate.forward(&h)?.silu()?;
            let u = layer.up.forward(&h)?;
            x = (layer.down.forward(&(g * u)?)? + x)?;
        }
        let last = x.i((.., l - 1, ..))?.contiguous()?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
        self.output.forward(&last)
    }
}

/// `cos`/`sin` tables `[positions, head_dim / 2]`.
fn rope_tables(
    head_dim: usize,
    theta: f32,
    positions: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f32 / head_dim as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, head_dim / 2), device)?;
    let t = Tensor::arange(0u32, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?;
    let freqs = t.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ALL, Behaviour, Family as TinyFamily, write_model};
    use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / scale.max(1e-6)
    }

    #[test]
    fn block_dot_products_match_candle_for_every_block_type() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (48, 512), &dev)?;
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::F32,
        ] {
            let q = QTensor::quantize(&w, dtype)?;
            for rows in [1, 3, 20] {
                let x = Tensor::randn(0f32, 1.0, (1, rows, 512), &dev)?;
                let ours = cpu_matmul(&q, &x)?.expect("CPU f32 input takes the direct path");
                assert_eq!(ours.dims(), &[1, rows, 48]);
                // Against the dense product with the dequantized weights: both sides only
                // differ by the activation's 8-bit quantization.
                let want = x.broadcast_matmul(&q.dequantize(&dev)?.t()?)?;
                let d = max_rel_diff(&ours, &want);
                assert!(d < 0.02, "{dtype:?} with {rows} rows: off by {d}");
            }
        }
        Ok(())
    }

    /// Logits of candle-transformers' own quantized model, step by step.
    enum Stock {
        Llama(quantized_llama::ModelWeights),
        Qwen2(quantized_qwen2::ModelWeights),
        Qwen3(quantized_qwen3::ModelWeights),
    }

    impl Stock {
        fn forward(&mut self, x: &Tensor, pos: usize) -> Result<Tensor> {
            match self {
                Self::Llama(m) => m.forward(x, pos),
                Self::Qwen2(m) => m.forward(x, pos),
                Self::Qwen3(m) => m.forward(x, pos),
            }
        }
    }

    #[test]
    fn every_family_matches_candle_transformers_step_by_step() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        for tiny in ALL {
            let (path, _) = write_model(dir.path(), tiny, Behaviour::Random, 7);
            let read = || {
                let mut r = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
                let ct = Content::read(&mut r).unwrap();
                (ct, r)
            };
            let family = match tiny {
                TinyFamily::Qwen2 => Family::Qwen2,
                TinyFamily::Qwen3 => Family::Qwen3,
                TinyFamily::SmolLm | TinyFamily::Llama3 => Family::Llama,
            };
            for prefill in [CpuPrefill::Compact, CpuPrefill::Repacked] {
                let (ct, mut r) = read();
                let mut stock = match family {
                    Family::Qwen2 => {
                        Stock::Qwen2(quantized_qwen2::ModelWeights::from_gguf(ct, &mut r, &dev)?)
                    }
                    Family::Qwen3 => {
                        Stock::Qwen3(quantized_qwen3::ModelWeights::from_gguf(ct, &mut r, &dev)?)
                    }
                    Family::Llama => {
                        Stock::Llama(quantized_llama::ModelWeights::from_gguf(ct, &mut r, &dev)?)
                    }
                };
                let (ct, mut r) = read();
                let mut ours = QDecoder::from_gguf(family, &ct, &mut r, &dev, 64, prefill)?;
                // A 7-token prompt, then three single tokens through the KV cache.
                let prompt = Tensor::new(&[[3u32, 17, 42, 5, 99, 8, 61]], &dev)?;
                let a = ours.forward(&prompt, 0)?;
                let b = stock.forward(&prompt, 0)?;
                let d = max_rel_diff(&a, &b);
                assert!(d < 1e-3, "{tiny:?} {prefill:?} prompt logits off by {d}");
                for (i, t) in [11u32, 23, 7].into_iter().enumerate() {
                    let x = Tensor::new(&[[t]], &dev)?;
                    let a = ours.forward(&x, 7 + i)?;
                    let b = stock.forward(&x, 7 + i)?;
                    let d = max_rel_diff(&a, &b);
                    assert!(d < 1e-3, "{tiny:?} {prefill:?} step {i} logits off by {d}");
                }
                // Rewinding the cache to the prompt reproduces the first step exactly.
                ours.truncate_kv(7);
                let x = Tensor::new(&[[11u32]], &dev)?;
                let again = ours.forward(&x, 7)?;
                ours.truncate_kv(7);
                let once_more = ours.forward(&x, 7)?;
                assert_eq!(max_rel_diff(&again, &once_more), 0.0);
            }
        }
        Ok(())
    }
}
