//! The local chat model: a quantized GGUF model that lives on a [`ModelWorker`] thread.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;

use super::qdecoder::{CpuPrefill, Family, QDecoder};
use super::template::{ChatTemplate, PromptFormat};
use super::{ChatError, SamplingParams, tokenizer};
use crate::device::{DeviceChoice, device_name, select_device};

/// Prompt tokens fed to the model per forward pass (bounds attention memory on long prompts).
const PREFILL_CHUNK: usize = 512;

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

/// The model on its thread.
pub(crate) struct LocalModel {
    weights: QDecoder,
    device: Device,
    stop_ids: Vec<u32>,
    context_length: usize,
    /// The tokens whose keys and values the cache holds, in order. A prompt that starts with
    /// them (the same conversation's next turn: same system prompt, history, last reply) only
    /// feeds the rest.
    cached: Vec<u32>,
}

/// The result of one generation, in tokens.
pub(crate) struct Generated {
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the previous generation.
    pub reused_tokens: usize,
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
        context = info.context_length, ?stop_ids, elapsed_ms = started.elapsed().as_millis() as u64,
        "chat model loaded"
    );
    Ok(Loaded {
        model: LocalModel {
            weights,
            device,
            stop_ids,
            context_length,
            cached: Vec::new(),
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

impl LocalModel {
    /// Generates up to `params.max_new_tokens` tokens after `prompt`, stopping at an end token.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
    ) -> Result<Generated, ChatError> {
        let inf = |e: candle_core::Error| ChatError::Inference(e.to_string());
        if prompt.is_empty() {
            return Err(ChatError::Inference("empty prompt".into()));
        }
        let room = self.context_length.saturating_sub(prompt.len());
        if room == 0 {
            return Err(ChatError::ContextOverflow {
                prompt_tokens: prompt.len(),
                context_window: self.context_length,
            });
        }
        let max_new = params.max_new_tokens.min(room);
        let mut sampler = LogitsProcessor::from_sampling(params.seed_or_random(), sampling(params));
        // Reuse the cached prefix; at least the last prompt token is fed again for its logits.
        let reused = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        self.weights.truncate_kv(reused);
        self.cached.truncate(reused);

        let started = Instant::now();
        let mut logits = None;
        for (i, chunk) in prompt[reused..].chunks(PREFILL_CHUNK).enumerate() {
            let input = Tensor::new(chunk, &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(inf)?;
            let fed = self
                .weights
                .forward(&input, reused + i * PREFILL_CHUNK)
                .map_err(|e| {
                    // What the cache holds past `reused` is unknown now.
                    self.cached.clear();
                    inf(e)
                })?;
            self.cached.extend_from_slice(chunk);
            logits = Some(fed);
        }
        let prefill = started.elapsed();
        let mut logits = logits.expect("non-empty prompt");
        let mut all: Vec<u32> = prompt.to_vec();
        let mut out = Vec::new();
        let started = Instant::now();
        while out.len() < max_new {
            // Nobody waits for this reply anymore (the turn timed out): stop computing it. The
            // KV cache still matches `cached`, so the next turn reuses it as usual.
            if crate::worker::cancelled() {
                return Err(ChatError::Inference(
                    "cancelled: the caller has gone".into(),
                ));
            }
            let mut l = logits
                .squeeze(0)
                .and_then(|l| l.to_dtype(DType::F32))
                .map_err(inf)?;
            if params.repeat_penalty != 1.0 && params.repeat_last_n > 0 {
                let start = all.len().saturating_sub(params.repeat_last_n);
                l = candle_transformers::utils::apply_repeat_penalty(
                    &l,
                    params.repeat_penalty,
                    &all[start..],
                )
                .map_err(inf)?;
            }
            let next = sampler.sample(&l).map_err(inf)?;
            if self.stop_ids.contains(&next) {
                break;
            }
            out.push(next);
            all.push(next);
            if out.len() == max_new {
                break;
            }
            let input = Tensor::new(&[next], &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(inf)?;
            logits = match self.weights.forward(&input, all.len() - 1) {
                Ok(l) => l,
                Err(e) => {
                    self.cached.clear();
                    return Err(inf(e));
                }
            };
            self.cached.push(next);
        }
        let decode = started.elapsed();
        tracing::debug!(
            prompt_tokens = prompt.len(),
            reused_tokens = reused,
            completion_tokens = out.len(),
            prefill_tok_s = (prompt.len() - reused) as f64 / prefill.as_secs_f64().max(1e-9),
            decode_tok_s = out.len() as f64 / decode.as_secs_f64().max(1e-9),
            "generated"
        );
        Ok(Generated {
            tokens: out,
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
        })
    }
}

fn sampling(p: &SamplingParams) -> Sampling {
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
