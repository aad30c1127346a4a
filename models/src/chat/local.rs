//! The local chat model: loading a quantized GGUF model, its tokenizer, template and end tokens,
//! for the model thread (`scheduler`), which generates.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_transformers::generation::Sampling;
use tokenizers::Tokenizer;

use super::qdecoder::{CpuPrefill, Family, QDecoder};
use super::template::{ChatTemplate, PromptFormat};
use super::{SamplingParams, tokenizer};
use crate::device::{DeviceChoice, device_name, select_device};

/// The longest context Sandra uses, whatever the model allows.
const MAX_CONTEXT: usize = 32_768;

/// What the async side keeps about a loaded model (no weights; cheap to share).
#[derive(Debug)]
pub(crate) struct ModelInfo {
    pub architecture: String,
    pub name: String,
    pub quantization: String,
    pub device: String,
    pub template: PromptFormat,
    pub context_length: usize,
    pub tokenizer_source: &'static str,
}

/// The model on its thread: weights and what ends a reply (keys and values live in the
/// scheduler's caches).
pub(crate) struct LocalModel {
    pub weights: QDecoder,
    pub stop_ids: Vec<u32>,
    pub context_length: usize,
}

/// Everything `load` produces: the model for the thread and what the async side keeps.
pub(crate) struct Loaded {
    pub model: LocalModel,
    pub tokenizer: Arc<Tokenizer>,
    pub info: ModelInfo,
}

/// Reads a GGUF chat model and its tokenizer. Errors are plain reasons; the caller adds the path.
pub(crate) fn load(
    path: &Path,
    device: DeviceChoice,
    prefill: CpuPrefill,
) -> Result<Loaded, String> {
    let started = Instant::now();
    let prefill = prefill.resolve();
    let device = select_device(device)?;
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| format!("not a GGUF file: {e}"))?;
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or("GGUF metadata lacks general.architecture")?;
    let name = md
        .get("general.name")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let quantization = quantization_label(&content);
    let mut context_length = md
        .get(&format!("{arch}.context_length"))
        .and_then(|v| tokenizer::as_u32(v).ok())
        .map(|v| v as usize)
        .ok_or_else(|| format!("GGUF metadata lacks {arch}.context_length"))?;
    // The RoPE tables are precomputed for this many positions (16 MB at 32k for 128-wide heads).
    context_length = context_length.min(MAX_CONTEXT);
    let family = Family::from_arch(&arch).ok_or_else(|| {
        format!("unsupported architecture `{arch}` (supported: qwen2, qwen3, llama)")
    })?;

    let (tok, tokenizer_source) = tokenizer::load(path, &content)?;
    let detected = ChatTemplate::detect(&arch, |t| tok.token_to_id(t).is_some());
    let token_text = |key: &str| {
        md.get(key)
            .and_then(|v| tokenizer::as_u32(v).ok())
            .and_then(|id| tok.id_to_token(id))
            .unwrap_or_default()
    };
    let template = PromptFormat::resolve(
        md.get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str),
        &token_text("tokenizer.ggml.bos_token_id"),
        &token_text("tokenizer.ggml.eos_token_id"),
        matches!(
            md.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        ),
        detected,
    );
    let mut stop_ids = tokenizer::ids_of(&tok, &template.end_tokens());
    for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = md.get(key).and_then(|v| tokenizer::as_u32(v).ok()) {
            stop_ids.push(id);
        }
    }
    stop_ids.sort_unstable();
    stop_ids.dedup();
    if stop_ids.is_empty() {
        return Err("no end-of-turn token found in the vocabulary".into());
    }

    let weights = QDecoder::from_gguf(
        family,
        &content,
        &mut reader,
        &device,
        context_length,
        prefill,
    )
    .map_err(|e| format!("loading {arch} weights: {e}"))?;
    if prefill == CpuPrefill::Repacked && device.is_cpu() {
        weights
            .prepare()
            .map_err(|e| format!("preparing {arch} weights: {e}"))?;
    }
    let info = ModelInfo {
        architecture: arch,
        name,
        quantization,
        device: device_name(&device).to_string(),
        template,
        context_length,
        tokenizer_source,
    };
    tracing::info!(
        model = %info.name, arch = %info.architecture, quant = %info.quantization,
        template = info.template.name(), tokenizer = info.tokenizer_source,
        context = info.context_length, ?stop_ids, cpu_prefill = ?prefill,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "chat model loaded"
    );
    Ok(Loaded {
        model: LocalModel {
            weights,
            stop_ids,
            context_length,
        },
        tokenizer: Arc::new(tok),
        info,
    })
}

/// "Q4_K_M"-style label: `general.file_type` when present, else the commonest tensor type.
fn quantization_label(ct: &Content) -> String {
    if let Some(ft) = ct
        .metadata
        .get("general.file_type")
        .and_then(|v| tokenizer::as_u32(v).ok())
    {
        // llama.cpp `llama_ftype`.
        let s = match ft {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            7 => "Q8_0",
            8 => "Q5_0",
            9 => "Q5_1",
            10 => "Q2_K",
            11 => "Q3_K_S",
            12 => "Q3_K_M",
            13 => "Q3_K_L",
            14 => "Q4_K_S",
            15 => "Q4_K_M",
            16 => "Q5_K_S",
            17 => "Q5_K_M",
            18 => "Q6_K",
            32 => "BF16",
            _ => "",
        };
        if !s.is_empty() {
            return s.to_string();
        }
    }
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for ti in ct.tensor_infos.values() {
        *counts.entry(format!("{:?}", ti.ggml_dtype)).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(k, _)| k.to_uppercase())
        .unwrap_or_default()
}

/// How `p` chooses tokens.
pub(crate) fn sampling(p: &SamplingParams) -> Sampling {
    if p.temperature <= 0.0 {
        Sampling::ArgMax
    } else if p.top_p > 0.0 && p.top_p < 1.0 {
        Sampling::TopP {
            p: p.top_p,
            temperature: p.temperature,
        }
    } else {
        Sampling::All {
            temperature: p.temperature,
        }
    }
}

/// Reads only the metadata of a GGUF file (for `sandra models list` and diagnostics).
pub fn read_gguf_metadata(path: &Path) -> Result<std::collections::HashMap<String, Value>, String> {
    let mut f = BufReader::new(File::open(path).map_err(|e| e.to_string())?);
    gguf_file::Content::read(&mut f)
        .map(|c| c.metadata)
        .map_err(|e| e.to_string())
}
