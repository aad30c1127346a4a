//! Whisper's encoder and decoder, written for fast greedy decoding on a CPU.
//!
//! Compared with candle-transformers' `whisper::model` (which informed it), the decoder keeps a
//! per-layer self-attention key/value cache, so each new token costs one position of work
//! instead of the whole sequence, and the cross-attention keys/values of the encoder output are
//! computed once per 30 s window (keys stored transposed, ready for `q·Kᵀ`). Every projection is
//! a [`QMatMul`], so the same code runs dense (`f32`) weights from safetensors and quantized
//! (`q8_0`, `q4_0`, ...) weights from GGUF.
//!
//! [`Whisper::decoder_logits_no_cache`] recomputes the whole sequence with a causal mask, the way
//! the stock decoder does; tests use it as the reference for the cached path.

use std::path::Path;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, LayerNorm};

use super::config::Config;
use super::fastops;

/// The largest attention-score buffer computed at once (see [`Attention::attend`]).
const SCORES_BYTES: usize = 24 << 20;

/// Where the weights come from.
pub enum Weights {
    Dense(candle_nn::VarBuilder<'static>),
    Gguf(candle_transformers::quantized_var_builder::VarBuilder),
}

impl Weights {
    /// Memory-maps `model.safetensors` (weights converted to `f32` on load).
    pub fn safetensors(path: &Path, device: &Device) -> Result<Self> {
        // SAFETY: the file is not modified while mapped (it is our own model directory).
        let vb =
            unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device)? };
        Ok(Self::Dense(vb))
    }

    pub fn gguf(path: &Path, device: &Device) -> Result<Self> {
        let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(path, device)?;
        Ok(Self::Gguf(vb))
    }

    /// A dense `f32` tensor (quantized ones are dequantized).
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match self {
            Self::Dense(vb) => vb.get(shape, name),
            Self::Gguf(vb) => vb.get(shape, name)?.dequantize(vb.device()),
        }
    }

    /// A matrix `[out, in]` for `x·Wᵀ`, stored as `store` asks.
    fn matrix(&self, name: &str, out: usize, inp: usize, store: Store) -> Result<QMatMul> {
        match (self, store) {
            (Self::Dense(vb), Store::AsFile | Store::Dense) => {
                Ok(QMatMul::Tensor(vb.get((out, inp), name)?))
            }
            (Self::Dense(vb), Store::Q8) => QMatMul::from_qtensor(QTensor::quantize(
                &vb.get((out, inp), name)?,
                GgmlDType::Q8_0,
            )?),
            (Self::Gguf(vb), Store::Dense) => Ok(QMatMul::Tensor(
                vb.get((out, inp), name)?.dequantize(vb.device())?,
            )),
            (Self::Gguf(vb), _) => QMatMul::from_arc(vb.get((out, inp), name)?),
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Self::Dense(vb) => vb.contains_tensor(name),
            Self::Gguf(vb) => vb.get_no_shape(name).is_ok(),
        }
    }
}

/// How a weight matrix is held in memory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    /// As the file has it (f32 from safetensors, quantized from GGUF).
    AsFile,
    /// Dense f32 whatever the file: for products over many rows (the encoder output), where
    /// candle's f32 GEMM beats its quantized kernels.
    Dense,
    /// `q8_0` (quantized on load when the file is f32): for one-token decoder steps, which are
    /// bound by memory bandwidth and read a quarter of the bytes.
    Q8,
}

struct Linear {
    w: QMatMul,
    b: Option<Tensor>,
}

impl Linear {
    fn load(
        w: &Weights,
        prefix: &str,
        (out, inp): (usize, usize),
        bias: bool,
        store: Store,
    ) -> Result<Self> {
        let m = w.matrix(&format!("{prefix}.weight"), out, inp, store)?;
        let b = if bias {
            Some(w.tensor(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Self { w: m, b })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.w.forward(x)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

fn layer_norm(w: &Weights, prefix: &str, n: usize) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        w.tensor(&format!("{prefix}.weight"), &[n])?,
        w.tensor(&format!("{prefix}.bias"), &[n])?,
        1e-5,
    ))
}

/// Query/key/value/output projections of one attention block.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    /// `store` is for the query and output projections, `kv_store` for the keys and values.
    fn load(
        w: &Weights,
        prefix: &str,
        d: usize,
        heads: usize,
        (store, kv_store): (Store, Store),
    ) -> Result<Self> {
        Ok(Self {
            q: Linear::load(w, &format!("{prefix}.q_proj"), (d, d), true, store)?,
            k: Linear::load(w, &format!("{prefix}.k_proj"), (d, d), false, kv_store)?,
            v: Linear::load(w, &format!("{prefix}.v_proj"), (d, d), true, kv_store)?,
            out: Linear::load(w, &format!("{prefix}.out_proj"), (d, d), true, store)?,
            heads,
            head_dim: d / heads,
        })
    }

    /// `[1, T, d]` → `[1, heads, T, head_dim]` (contiguous).
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn merge_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, t, _) = x.dims4()?;
        x.transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))
    }

    fn scaled_query(&self, x: &Tensor) -> Result<Tensor> {
        let q = self.q.forward(x)?;
        self.split_heads(&(q * (1.0 / (self.head_dim as f64).sqrt()))?)
    }

    /// softmax(q·kᵀ + mask)·v, with `kt` already transposed to `[1, heads, head_dim, S]`.
    fn attend(&self, q: &Tensor, kt: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (_, heads, t, _) = q.dims4()?;
        let s = kt.dim(3)?;
        // Score buffers above glibc's largest mmap threshold (32 MiB) are mapped and zeroed
        // afresh on every call; heads are taken in groups that stay below it (the encoder's
        // 8 × 1500 × 1500 scores are 72 MB at once, 9 MB a head).
        let group = (SCORES_BYTES / (t * s * 4).max(1)).clamp(1, heads);
        let mut outs = Vec::with_capacity(heads.div_ceil(group));
        for h in (0..heads).step_by(group) {
            let n = group.min(heads - h);
            let (q, kt, v) = if n == heads {
                (q.clone(), kt.clone(), v.clone())
            } else {
                (q.narrow(1, h, n)?, kt.narrow(1, h, n)?, v.narrow(1, h, n)?)
            };
            let mut scores = q.matmul(&kt)?;
            if let Some(m) = mask {
                scores = scores.broadcast_add(m)?;
            }
            outs.push(fastops::softmax_last_dim(scores)?.matmul(&v)?);
        }
        let o = if outs.len() == 1 {
            outs.pop().expect("one group")
        } else {
            Tensor::cat(&outs, 1)?
        };
        self.out.forward(&self.merge_heads(&o)?)
    }

    /// Full (uncached) attention of `x` over `kv_source`.
    fn forward_full(
        &self,
        x: &Tensor,
        kv_source: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = self.scaled_query(x)?;
        let kt = self
            .split_heads(&self.k.forward(kv_source)?)?
            .transpose(2, 3)?
            .contiguous()?;
        let v = self.split_heads(&self.v.forward(kv_source)?)?;
        self.attend(&q, &kt, &v, mask)
    }
}

struct Mlp {
    fc1: Linear,
    fc2: Linear,
    ln: LayerNorm,
}

impl Mlp {
    fn load(w: &Weights, prefix: &str, d: usize, ffn: usize, store: Store) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(w, &format!("{prefix}.fc1"), (ffn, d), true, store)?,
            fc2: Linear::load(w, &format!("{prefix}.fc2"), (d, ffn), true, store)?,
            ln: layer_norm(w, &format!("{prefix}.final_layer_norm"), d)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = fastops::gelu_erf(self.fc1.forward(&self.ln.forward(x)?)?)?;
        x + self.fc2.forward(&h)?
    }
}

struct EncoderLayer {
    attn: Attention,
    attn_ln: LayerNorm,
    mlp: Mlp,
}

pub struct Encoder {
    conv1: Conv1d,
    conv2: Conv1d,
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    ln_post: LayerNorm,
}

fn conv1d(w: &Weights, prefix: &str, inp: usize, out: usize, stride: usize) -> Result<Conv1d> {
    let weight = w.tensor(&format!("{prefix}.weight"), &[out, inp, 3])?;
    let bias = w.tensor(&format!("{prefix}.bias"), &[out])?;
    let cfg = Conv1dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    Ok(Conv1d::new(weight, Some(bias), cfg))
}

/// Whisper's fixed sinusoidal position table for the encoder (used when a checkpoint omits it).
pub fn sinusoids(length: usize, channels: usize) -> Vec<f32> {
    let half = channels / 2;
    let inc = (10_000f64).ln() / (half as f64 - 1.0);
    let mut out = vec![0f32; length * channels];
    for t in 0..length {
        for i in 0..half {
            let a = t as f64 * (-inc * i as f64).exp();
            out[t * channels + i] = a.sin() as f32;
            out[t * channels + half + i] = a.cos() as f32;
        }
    }
    out
}

impl Encoder {
    fn load(w: &Weights, cfg: &Config, device: &Device) -> Result<Self> {
        let d = cfg.d_model;
        let p = "model.encoder";
        let pos_name = format!("{p}.embed_positions.weight");
        let positions = if w.contains(&pos_name) {
            w.tensor(&pos_name, &[cfg.max_source_positions, d])?
        } else {
            Tensor::from_vec(
                sinusoids(cfg.max_source_positions, d),
                (cfg.max_source_positions, d),
                device,
            )?
        };
        let layers = (0..cfg.encoder_layers)
            .map(|i| {
                let lp = format!("{p}.layers.{i}");
                Ok(EncoderLayer {
                    attn: Attention::load(
                        w,
                        &format!("{lp}.self_attn"),
                        d,
                        cfg.encoder_attention_heads,
                        (Store::AsFile, Store::AsFile),
                    )?,
                    attn_ln: layer_norm(w, &format!("{lp}.self_attn_layer_norm"), d)?,
                    mlp: Mlp::load(w, &lp, d, cfg.encoder_ffn(), Store::AsFile)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv1: conv1d(w, &format!("{p}.conv1"), cfg.num_mel_bins, d, 1)?,
            conv2: conv1d(w, &format!("{p}.conv2"), d, d, 2)?,
            positions,
            layers,
            ln_post: layer_norm(w, &format!("{p}.layer_norm"), d)?,
        })
    }

    /// `mel`: `[1, n_mels, frames]` → `[1, frames / 2, d_model]`.
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let x = fastops::gelu_erf(self.conv1.forward(mel)?)?;
        let x = fastops::gelu_erf(self.conv2.forward(&x)?)?;
        let x = x.transpose(1, 2)?;
        let t = x.dim(1)?;
        let mut x = x.broadcast_add(&self.positions.narrow(0, 0, t)?)?;
        for l in &self.layers {
            let h = l.attn_ln.forward(&x)?;
            x = (&x + l.attn.forward_full(&h, &h, None)?)?;
            x = l.mlp.forward(&x)?;
        }
        self.ln_post.forward(&x)
    }
}

struct DecoderLayer {
    self_attn: Attention,
    self_ln: LayerNorm,
    cross_attn: Attention,
    cross_ln: LayerNorm,
    mlp: Mlp,
}

/// Per-window decoder state: the self-attention cache grows with each token, the
/// cross-attention keys/values are fixed for the window.
pub struct DecoderState {
    /// Per layer: keys transposed `[1, H, hd, T]` and values `[1, H, T, hd]` so far.
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    /// Per layer: encoder keys transposed `[1, H, hd, S]` and values `[1, H, S, hd]`.
    cross_kv: Vec<(Tensor, Tensor)>,
    /// Tokens already in the cache.
    pub len: usize,
}

pub struct Decoder {
    /// The output projection (tied to the token embedding), possibly quantized.
    logits_proj: QMatMul,
    positions: Tensor,
    layers: Vec<DecoderLayer>,
    ln: LayerNorm,
    device: Device,
}

impl Decoder {
    fn load(w: &Weights, cfg: &Config, device: &Device, q8: bool) -> Result<Self> {
        let d = cfg.d_model;
        let p = "model.decoder";
        let store = if q8 { Store::Q8 } else { Store::AsFile };
        let embed_name = format!("{p}.embed_tokens.weight");
        let logits_proj = w.matrix(&embed_name, cfg.vocab_size, d, store)?;
        let layers = (0..cfg.decoder_layers)
            .map(|i| {
                let lp = format!("{p}.layers.{i}");
                let h = cfg.decoder_attention_heads;
                Ok(DecoderLayer {
                    self_attn: Attention::load(
                        w,
                        &format!("{lp}.self_attn"),
                        d,
                        h,
                        (store, store),
                    )?,
                    self_ln: layer_norm(w, &format!("{lp}.self_attn_layer_norm"), d)?,
                    // Cross keys/values are projected once per window over 1500 positions.
                    cross_attn: Attention::load(
                        w,
                        &format!("{lp}.encoder_attn"),
                        d,
                        h,
                        (store, Store::Dense),
                    )?,
                    cross_ln: layer_norm(w, &format!("{lp}.encoder_attn_layer_norm"), d)?,
                    mlp: Mlp::load(w, &lp, d, cfg.decoder_ffn(), store)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            logits_proj,
            positions: w.tensor(
                &format!("{p}.embed_positions.weight"),
                &[cfg.max_target_positions, d],
            )?,
            layers,
            ln: layer_norm(w, &format!("{p}.layer_norm"), d)?,
            device: device.clone(),
        })
    }

    /// Prepares a window: projects the encoder output into each layer's cross-attention K/V.
    pub fn start(&self, audio: &Tensor) -> Result<DecoderState> {
        let cross_kv = self
            .layers
            .iter()
            .map(|l| {
                let a = &l.cross_attn;
                let kt = a
                    .split_heads(&a.k.forward(audio)?)?
                    .transpose(2, 3)?
                    .contiguous()?;
                let v = a.split_heads(&a.v.forward(audio)?)?;
                Ok((kt, v))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderState {
            self_kv: vec![None; self.layers.len()],
            cross_kv,
            len: 0,
        })
    }

    fn embed_tokens(&self, tokens: &[u32], offset: usize) -> Result<Tensor> {
        let ids = Tensor::new(tokens, &self.device)?;
        // Rows of the tied output projection, f32 or quantized.
        let tok = self.logits_proj.embedding(&ids)?;
        let pos = self.positions.narrow(0, offset, tokens.len())?;
        (tok + pos)?.unsqueeze(0)
    }

    /// Causal mask for `n` new tokens after `offset` cached ones; none for a single token.
    fn causal_mask(&self, n: usize, offset: usize) -> Result<Option<Tensor>> {
        if n <= 1 {
            return Ok(None);
        }
        crate::attention::causal_mask(n, offset, &self.device).map(Some)
    }

    /// Feeds `tokens` (appended to what `state` holds) and returns the logits of the last one,
    /// `[vocab]`.
    pub fn step(&self, state: &mut DecoderState, tokens: &[u32]) -> Result<Tensor> {
        let n = tokens.len();
        let offset = state.len;
        let mut x = self.embed_tokens(tokens, offset)?;
        let mask = self.causal_mask(n, offset)?;
        for (i, l) in self.layers.iter().enumerate() {
            // Self-attention over the cache plus the new positions.
            let a = &l.self_attn;
            let h = l.self_ln.forward(&x)?;
            let q = a.scaled_query(&h)?;
            let k_new = a.split_heads(&a.k.forward(&h)?)?.transpose(2, 3)?;
            let v_new = a.split_heads(&a.v.forward(&h)?)?;
            let (kt, v) = match state.self_kv[i].take() {
                Some((kt, v)) => (
                    Tensor::cat(&[&kt, &k_new], 3)?,
                    Tensor::cat(&[&v, &v_new], 2)?,
                ),
                None => (k_new.contiguous()?, v_new),
            };
            x = (&x + a.attend(&q, &kt, &v, mask.as_ref())?)?;
            state.self_kv[i] = Some((kt, v));
            // Cross-attention over the window's audio.
            let c = &l.cross_attn;
            let h = l.cross_ln.forward(&x)?;
            let q = c.scaled_query(&h)?;
            let (kt, v) = &state.cross_kv[i];
            x = (&x + c.attend(&q, kt, v, None)?)?;
            x = l.mlp.forward(&x)?;
        }
        state.len += n;
        self.logits(&x.narrow(1, n - 1, 1)?)
    }

    fn logits(&self, last: &Tensor) -> Result<Tensor> {
        let h = self.ln.forward(last)?;
        self.logits_proj.forward(&h)?.flatten_all()
    }

    /// The stock way: the whole sequence again, no cache. Reference for tests.
    pub fn logits_no_cache(&self, audio: &Tensor, tokens: &[u32]) -> Result<Tensor> {
        let n = tokens.len();
        let mut x = self.embed_tokens(tokens, 0)?;
        let mask = self.causal_mask(n, 0)?;
        for l in &self.layers {
            let h = l.self_ln.forward(&x)?;
            x = (&x + l.self_attn.forward_full(&h, &h, mask.as_ref())?)?;
            let h = l.cross_ln.forward(&x)?;
            x = (&x + l.cross_attn.forward_full(&h, audio, None)?)?;
            x = l.mlp.forward(&x)?;
        }
        self.logits(&x.narrow(1, n - 1, 1)?)
    }
}

/// Encoder + decoder.
pub struct Whisper {
    pub config: Config,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub device: Device,
}

impl Whisper {
    /// `decoder_q8`: hold the decoder's per-token matrices as `q8_0` (see [`Store::Q8`]).
    pub fn load(
        weights: &Weights,
        config: Config,
        device: &Device,
        decoder_q8: bool,
    ) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::load(weights, &config, device)?,
            decoder: Decoder::load(weights, &config, device, decoder_q8)?,
            config,
            device: device.clone(),
        })
    }

    /// Convenience for tests: the uncached logits of `tokens` after encoding `mel`.
    pub fn decoder_logits_no_cache(&self, audio: &Tensor, tokens: &[u32]) -> Result<Tensor> {
        self.decoder.logits_no_cache(audio, tokens)
    }
}
