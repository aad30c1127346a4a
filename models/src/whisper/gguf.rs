//! Quantized Whisper weights in GGUF, written from a converted `model.safetensors`.
//!
//! Tensor names stay Hugging Face's (`model.decoder.layers.0.fc1.weight`, ...), the layout
//! candle's `quantized_var_builder` and [`super::model::Weights::gguf`] read. The default plan
//! keeps what is compute-bound dense and quantizes what is memory-bound:
//! - decoder projections and the token embedding (also the output projection, read in full for
//!   every token) → `q8_0`;
//! - encoder projections → `f16` on disk, dequantized to `f32` at load: a 30 s window is a
//!   1500-row matrix product, where dense gemm beats candle's quantized dot products;
//! - convolutions, biases, norms, position tables → `f32`.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::WhisperError;

/// Which GGML type each group of tensors gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantPlan {
    pub encoder: GgmlDType,
    pub decoder: GgmlDType,
    pub embedding: GgmlDType,
}

impl Default for QuantPlan {
    fn default() -> Self {
        Self {
            encoder: GgmlDType::F16,
            decoder: GgmlDType::Q8_0,
            embedding: GgmlDType::Q8_0,
        }
    }
}

const PROJECTIONS: &[&str] = &["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];

fn err(msg: impl std::fmt::Display) -> WhisperError {
    WhisperError::Convert(msg.to_string())
}

/// The GGML type `name` (of `shape`) gets under `plan`.
pub fn dtype_for(name: &str, shape: &[usize], plan: QuantPlan) -> GgmlDType {
    let is_proj = shape.len() == 2
        && name.ends_with(".weight")
        && PROJECTIONS
            .iter()
            .any(|p| name.ends_with(&format!(".{p}.weight")));
    let wanted = if name == "model.decoder.embed_tokens.weight" {
        plan.embedding
    } else if is_proj && name.starts_with("model.encoder.") {
        plan.encoder
    } else if is_proj && name.starts_with("model.decoder.") {
        plan.decoder
    } else {
        GgmlDType::F32
    };
    // Quantized blocks run along the input dimension; fall back when it does not divide.
    if shape.len() == 2 && shape[1].is_multiple_of(wanted.block_size()) {
        wanted
    } else if shape.len() == 2 && shape[1].is_multiple_of(GgmlDType::Q8_0.block_size()) {
        GgmlDType::F16
    } else {
        GgmlDType::F32
    }
}

/// Writes `dst` from `src_dir/model.safetensors` (+ `config.json` stored as metadata).
pub fn quantize_dir(src_dir: &Path, dst: &Path, plan: QuantPlan) -> Result<(), WhisperError> {
    let st = src_dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&st, &Device::Cpu)
        .map_err(|e| err(format!("{}: {e}", st.display())))?;
    let config = std::fs::read_to_string(src_dir.join("config.json")).unwrap_or_default();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut qts = Vec::with_capacity(names.len());
    for name in &names {
        let t: &Tensor = &tensors[*name];
        let t = t.to_dtype(DType::F32).map_err(err)?;
        let dt = dtype_for(name, t.dims(), plan);
        let q = QTensor::quantize(&t, dt).map_err(|e| err(format!("{name}: {e}")))?;
        qts.push(q);
    }
    let arch = Value::String("whisper".into());
    let cfg = Value::String(config);
    let metadata = [
        ("general.architecture", &arch),
        ("whisper.config_json", &cfg),
    ];
    let refs: Vec<(&str, &QTensor)> = names.iter().map(|n| n.as_str()).zip(qts.iter()).collect();
    let tmp = dst.with_extension("gguf.partial");
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    gguf_file::write(&mut f, &metadata, &refs).map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, dst).map_err(|e| err(format!("{}: {e}", dst.display())))?;
    Ok(())
}
