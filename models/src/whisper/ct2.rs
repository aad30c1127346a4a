//! CTranslate2 Whisper weights (`model.bin`, as shipped for faster-whisper) → Hugging Face-named
//! `model.safetensors` + `config.json` + `tokenizer.json`, the layout [`super::model`] loads.
//!
//! `model.bin` (little-endian): `u32 version`, `string spec`, `u32 revision`, `u32 n_vars`, then
//! per variable `string name, u8 rank, u32 dims[rank], u8 dtype, u32 n_bytes, bytes`, then
//! `u32 n_aliases` and `(string alias, string target)` pairs. A string is a `u16` length that
//! counts a trailing NUL, then the bytes. CTranslate2 fuses projections: self-attention
//! `linear_0` is q‖k‖v and cross-attention `linear_1` is k‖v (Whisper's k has no bias, so that
//! third/half of the fused bias is dropped).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

use super::WhisperError;
use super::config::Config;

fn err(msg: impl std::fmt::Display) -> WhisperError {
    WhisperError::Convert(msg.to_string())
}

/// CTranslate2 element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl Ct2DType {
    fn from_id(id: u8) -> Result<Self, WhisperError> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::BF16,
            _ => return Err(err(format!("unknown dtype id {id}"))),
        })
    }

    pub fn id(self) -> u8 {
        match self {
            Self::F32 => 0,
            Self::I8 => 1,
            Self::I16 => 2,
            Self::I32 => 3,
            Self::F16 => 4,
            Self::BF16 => 5,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One stored variable.
#[derive(Debug, Clone)]
pub struct Ct2Var {
    pub dims: Vec<usize>,
    pub dtype: Ct2DType,
    pub data: Vec<u8>,
}

/// A parsed `model.bin`.
#[derive(Debug, Clone)]
pub struct Ct2Model {
    pub version: u32,
    pub spec: String,
    pub revision: u32,
    pub vars: BTreeMap<String, Ct2Var>,
    pub aliases: BTreeMap<String, String>,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WhisperError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| err(format!("model.bin truncated at byte {}", self.pos)))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WhisperError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WhisperError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, WhisperError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String, WhisperError> {
        let n = self.u16()? as usize;
        let s = self.take(n)?;
        let s = s.strip_suffix(&[0]).unwrap_or(s);
        String::from_utf8(s.to_vec()).map_err(|_| err("non-UTF-8 name in model.bin"))
    }
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }
}

impl Ct2Model {
    pub fn parse(bytes: &[u8]) -> Result<Self, WhisperError> {
        let mut r = Reader { b: bytes, pos: 0 };
        let version = r.u32()?;
        if !(5..=6).contains(&version) {
            return Err(err(format!("unsupported model.bin version {version}")));
        }
        let spec = r.string()?;
        let revision = r.u32()?;
        let n = r.u32()? as usize;
        let mut vars = BTreeMap::new();
        for _ in 0..n {
            let name = r.string()?;
            let rank = r.u8()? as usize;
            let dims = (0..rank)
                .map(|_| r.u32().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let dtype = Ct2DType::from_id(r.u8()?)?;
            let n_bytes = r.u32()? as usize;
            let count: usize = dims.iter().product();
            if count * dtype.size() != n_bytes {
                return Err(err(format!(
                    "{name}: {n_bytes} bytes for dims {dims:?} of {dtype:?}"
                )));
            }
            let data = r.take(n_bytes)?.to_vec();
            vars.insert(name, Ct2Var { dims, dtype, data });
        }
        let mut aliases = BTreeMap::new();
        if !r.done() {
            let n = r.u32()?;
            for _ in 0..n {
                let a = r.string()?;
                let t = r.string()?;
                aliases.insert(a, t);
            }
        }
        Ok(Self {
            version,
            spec,
            revision,
            vars,
            aliases,
        })
    }

    fn var(&self, name: &str) -> Result<&Ct2Var, WhisperError> {
        let name = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.vars
            .get(name)
            .ok_or_else(|| err(format!("model.bin has no variable {name}")))
    }

    /// A variable as an `f32` tensor (int8 ones are dequantized with their `*_scale`).
    pub fn tensor(&self, name: &str) -> Result<Tensor, WhisperError> {
        let v = self.var(name)?;
        let dev = &Device::Cpu;
        let c = |e: candle_core::Error| err(format!("{name}: {e}"));
        let t = match v.dtype {
            Ct2DType::F32 => {
                Tensor::from_raw_buffer(&v.data, DType::F32, &v.dims, dev).map_err(c)?
            }
            Ct2DType::F16 => Tensor::from_raw_buffer(&v.data, DType::F16, &v.dims, dev)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(c)?,
            Ct2DType::BF16 => Tensor::from_raw_buffer(&v.data, DType::BF16, &v.dims, dev)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(c)?,
            Ct2DType::I8 => {
                let scale_name = format!("{name}_scale");
                let scale = self.tensor(&scale_name)?;
                let q: Vec<f32> = v.data.iter().map(|&b| b as i8 as f32).collect();
                let q = Tensor::from_vec(q, v.dims.as_slice(), dev).map_err(c)?;
                let rows = v.dims[0];
                q.broadcast_div(&scale.reshape((rows, 1)).map_err(c)?)
                    .map_err(c)?
            }
            other => return Err(err(format!("{name}: cannot convert {other:?} weights"))),
        };
        Ok(t)
    }

    /// A scalar integer variable (e.g. `encoder/num_heads`).
    fn scalar(&self, name: &str) -> Option<usize> {
        let v = self.vars.get(name)?;
        let d = &v.data;
        match v.dtype {
            Ct2DType::I8 => d.first().map(|&x| x as usize),
            Ct2DType::I16 => Some(u16::from_le_bytes([d[0], d[1]]) as usize),
            Ct2DType::I32 => Some(u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize),
            _ => None,
        }
    }

    fn count_layers(&self, side: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.vars
                    .contains_key(&format!("{side}/layer_{i}/ffn/linear_0/weight"))
            })
            .count()
    }
}

/// Output precision for the converted weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutDType {
    #[default]
    F16,
    F32,
}

/// Converts a parsed model into Hugging Face tensor names (all `f32`) and its config.
pub fn map_tensors(
    m: &Ct2Model,
    ct2_config: &Value,
) -> Result<(HashMap<String, Tensor>, Config), WhisperError> {
    if !m.spec.starts_with("Whisper") {
        return Err(err(format!("spec {:?} is not a Whisper model", m.spec)));
    }
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let c = |e: candle_core::Error| err(e);
    let conv1 = m.var("encoder/conv1/weight")?.dims.clone();
    if conv1.len() != 3 {
        return Err(err("encoder/conv1/weight is not rank 3"));
    }
    let (d_model, n_mels) = (conv1[0], conv1[1]);
    let split = |t: &Tensor, parts: usize| -> Result<Vec<Tensor>, WhisperError> {
        let n = t.dim(0).map_err(c)? / parts;
        (0..parts)
            .map(|i| t.narrow(0, i * n, n).map_err(c))
            .collect()
    };
    let mut put = |name: String, t: Tensor| {
        out.insert(name, t);
    };
    let ln = |put: &mut dyn FnMut(String, Tensor), src: &str, dst: &str| {
        put(format!("{dst}.weight"), m.tensor(&format!("{src}/gamma"))?);
        put(format!("{dst}.bias"), m.tensor(&format!("{src}/beta"))?);
        Ok::<_, WhisperError>(())
    };
    let lin = |put: &mut dyn FnMut(String, Tensor), src: &str, dst: &str| {
        put(format!("{dst}.weight"), m.tensor(&format!("{src}/weight"))?);
        put(format!("{dst}.bias"), m.tensor(&format!("{src}/bias"))?);
        Ok::<_, WhisperError>(())
    };
    for conv in ["conv1", "conv2"] {
        lin(
            &mut put,
            &format!("encoder/{conv}"),
            &format!("model.encoder.{conv}"),
        )?;
    }
    put(
        "model.encoder.embed_positions.weight".into(),
        m.tensor("encoder/position_encodings/encodings")?,
    );
    put(
        "model.decoder.embed_positions.weight".into(),
        m.tensor("decoder/position_encodings/encodings")?,
    );
    put(
        "model.decoder.embed_tokens.weight".into(),
        m.tensor("decoder/embeddings/weight")?,
    );
    ln(&mut put, "encoder/layer_norm", "model.encoder.layer_norm")?;
    ln(&mut put, "decoder/layer_norm", "model.decoder.layer_norm")?;

    let enc_layers = m.count_layers("encoder");
    let dec_layers = m.count_layers("decoder");
    for (side, n, cross) in [
        ("encoder", enc_layers, false),
        ("decoder", dec_layers, true),
    ] {
        for i in 0..n {
            let s = format!("{side}/layer_{i}");
            let d = format!("model.{side}.layers.{i}");
            let w = split(
                &m.tensor(&format!("{s}/self_attention/linear_0/weight"))?,
                3,
            )?;
            let b = split(&m.tensor(&format!("{s}/self_attention/linear_0/bias"))?, 3)?;
            put(format!("{d}.self_attn.q_proj.weight"), w[0].clone());
            put(format!("{d}.self_attn.q_proj.bias"), b[0].clone());
            put(format!("{d}.self_attn.k_proj.weight"), w[1].clone());
            put(format!("{d}.self_attn.v_proj.weight"), w[2].clone());
            put(format!("{d}.self_attn.v_proj.bias"), b[2].clone());
            lin(
                &mut put,
                &format!("{s}/self_attention/linear_1"),
                &format!("{d}.self_attn.out_proj"),
            )?;
            ln(
                &mut put,
                &format!("{s}/self_attention/layer_norm"),
                &format!("{d}.self_attn_layer_norm"),
            )?;
            lin(&mut put, &format!("{s}/ffn/linear_0"), &format!("{d}.fc1"))?;
            lin(&mut put, &format!("{s}/ffn/linear_1"), &format!("{d}.fc2"))?;
            ln(
                &mut put,
                &format!("{s}/ffn/layer_norm"),
                &format!("{d}.final_layer_norm"),
            )?;
            if cross {
                lin(
                    &mut put,
                    &format!("{s}/attention/linear_0"),
                    &format!("{d}.encoder_attn.q_proj"),
                )?;
                let w = split(&m.tensor(&format!("{s}/attention/linear_1/weight"))?, 2)?;
                let b = split(&m.tensor(&format!("{s}/attention/linear_1/bias"))?, 2)?;
                put(format!("{d}.encoder_attn.k_proj.weight"), w[0].clone());
                put(format!("{d}.encoder_attn.v_proj.weight"), w[1].clone());
                put(format!("{d}.encoder_attn.v_proj.bias"), b[1].clone());
                lin(
                    &mut put,
                    &format!("{s}/attention/linear_2"),
                    &format!("{d}.encoder_attn.out_proj"),
                )?;
                ln(
                    &mut put,
                    &format!("{s}/attention/layer_norm"),
                    &format!("{d}.encoder_attn_layer_norm"),
                )?;
            }
        }
    }
    let dims = |n: &str| m.var(n).map(|v| v.dims.clone());
    let ids = |key: &str| -> Vec<u32> {
        ct2_config
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as u32)
                    .collect()
            })
            .unwrap_or_default()
    };
    let heads = |side: &str| {
        m.scalar(&format!("{side}/num_heads"))
            .unwrap_or(d_model / 64)
    };
    let config = Config {
        num_mel_bins: n_mels,
        max_source_positions: dims("encoder/position_encodings/encodings")?[0],
        d_model,
        encoder_attention_heads: heads("encoder"),
        encoder_layers: enc_layers,
        encoder_ffn_dim: dims("encoder/layer_0/ffn/linear_0/weight")?[0],
        vocab_size: dims("decoder/embeddings/weight")?[0],
        max_target_positions: dims("decoder/position_encodings/encodings")?[0],
        decoder_attention_heads: heads("decoder"),
        decoder_layers: dec_layers,
        decoder_ffn_dim: dims("decoder/layer_0/ffn/linear_0/weight")?[0],
        suppress_tokens: ids("suppress_ids"),
        begin_suppress_tokens: ids("suppress_ids_begin"),
    };
    Ok((out, config))
}

/// `config.json` in Hugging Face's shape (plus what candle's `whisper::Config` reads).
pub fn hf_config_json(cfg: &Config) -> Value {
    let mut v = serde_json::to_value(cfg).expect("config serialises");
    let o = v.as_object_mut().expect("object");
    o.insert("model_type".into(), json!("whisper"));
    o.insert(
        "architectures".into(),
        json!(["WhisperForConditionalGeneration"]),
    );
    o.insert("activation_function".into(), json!("gelu"));
    o.insert("scale_embedding".into(), json!(false));
    o.insert("torch_dtype".into(), json!("float32"));
    v
}

/// Converts `model_bin` (with its CTranslate2 `config.json`) into `out_dir/model.safetensors`
/// and `out_dir/config.json`, and copies `tokenizer.json` from beside `model_bin` if present.
pub fn convert(
    model_bin: &Path,
    ct2_config_json: &Path,
    out_dir: &Path,
) -> Result<Config, WhisperError> {
    convert_with(model_bin, ct2_config_json, out_dir, OutDType::F16)
}

/// [`convert`] with a chosen output precision.
pub fn convert_with(
    model_bin: &Path,
    ct2_config_json: &Path,
    out_dir: &Path,
    dtype: OutDType,
) -> Result<Config, WhisperError> {
    let io = |p: &Path, e: std::io::Error| err(format!("{}: {e}", p.display()));
    let bytes = std::fs::read(model_bin).map_err(|e| io(model_bin, e))?;
    let model = Ct2Model::parse(&bytes)?;
    drop(bytes);
    let cfg_text = std::fs::read_to_string(ct2_config_json).map_err(|e| io(ct2_config_json, e))?;
    let ct2_cfg: Value = serde_json::from_str(&cfg_text)
        .map_err(|e| err(format!("{}: {e}", ct2_config_json.display())))?;
    let (tensors, config) = map_tensors(&model, &ct2_cfg)?;
    drop(model);
    let target = match dtype {
        OutDType::F16 => DType::F16,
        OutDType::F32 => DType::F32,
    };
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(target)?.contiguous()?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()
        .map_err(err)?;
    std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, e))?;
    let st = out_dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &st)
        .map_err(|e| err(format!("{}: {e}", st.display())))?;
    let cfg_out = out_dir.join("config.json");
    let text = serde_json::to_string_pretty(&hf_config_json(&config)).expect("json");
    std::fs::write(&cfg_out, text).map_err(|e| io(&cfg_out, e))?;
    if let Some(dir) = model_bin.parent() {
        let tok = dir.join("tokenizer.json");
        if tok.is_file() {
            let dst = out_dir.join("tokenizer.json");
            std::fs::copy(&tok, &dst).map_err(|e| io(&dst, e))?;
        }
    }
    Ok(config)
}
