//! moondream2 on candle: a SigLIP-style vision encoder whose 729 patch embeddings are projected
//! into a Phi-1.5 decoder's input, placed after the BOS token and before the prompt text.
//!
//! An installed model directory holds the weights (`model.safetensors`, f16/f32; or a `*.gguf`
//! quantized by candle's conversion), `tokenizer.json`, and optionally [`DESCRIPTOR_FILE`]. Without
//! a descriptor the directory is moondream2 at the size the Hub ships (`Config::v2`); the
//! descriptor names the architecture and may carry another config (the tests' tiny model).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_transformers::models::{moondream, quantized_moondream};
use serde::Deserialize;
use tokenizers::Tokenizer;

use super::{SceneError, question_or_caption};
use crate::device::{DeviceChoice, select_device};

/// Optional descriptor of an installed directory: `{"architecture": "moondream2", "config":
/// {"phi_config": {...}, "vision_config": {...}}}`.
pub const DESCRIPTOR_FILE: &str = "sandra-vlm.json";

/// The architecture this loader knows.
const ARCHITECTURE: &str = "moondream2";
/// moondream2's vision transformer cuts the image into 14×14 patches.
const PATCH: usize = 14;
/// Patches in moondream2's 378×378 input.
const V2_EMBED_LEN: usize = 729;
/// moondream2's text context (Phi-1.5's `n_positions`).
const V2_CONTEXT: usize = 2048;
/// The end-of-answer marker moondream2 writes as text (the candle example shows it as a trailing
/// `<`); the answer ends there even when no EOS token follows.
const END_MARKER: &str = "<END>";
/// moondream2's BOS and EOS token.
const ENDOFTEXT: &str = "<|endoftext|>";

#[derive(Deserialize)]
struct Descriptor {
    architecture: String,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

enum Model {
    Full(moondream::Model),
    Quantized(quantized_moondream::Model),
}

/// One answer and how it was produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneAnswer {
    pub text: String,
    /// Tokens generated, the EOS token included when the model wrote one.
    pub tokens: usize,
    /// The model ended the answer (EOS or the end marker) rather than running into `max_tokens`.
    pub finished: bool,
}

/// A local vision-language model. Not `Sync`: it lives on its model thread.
pub struct LocalScene {
    model: Model,
    tokenizer: Tokenizer,
    device: Device,
    dtype: DType,
    /// Side of the square image the vision encoder takes.
    image_side: u32,
    /// Image embeddings the decoder sees before the prompt.
    embed_len: usize,
    context: usize,
    bos: u32,
    eos: u32,
    description: String,
}

impl LocalScene {
    /// Loads an installed model directory on the best device there is (CUDA when built in).
    pub fn load(dir: &Path) -> Result<Self, SceneError> {
        Self::load_on(dir, DeviceChoice::Auto)
    }

    /// Loads an installed model directory on the given device.
    pub fn load_on(dir: &Path, device: DeviceChoice) -> Result<Self, SceneError> {
        let device = select_device(device).map_err(SceneError::Model)?;
        let err = |p: &Path, e: &dyn std::fmt::Display| {
            SceneError::Model(format!("{}: {e}", p.display()))
        };
        let (config, embed_len, context) = read_config(dir)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| err(&tok_path, &e))?;
        let special = tokenizer
            .token_to_id(ENDOFTEXT)
            .ok_or_else(|| err(&tok_path, &format!("no `{ENDOFTEXT}` token")))?;
        let side = (embed_len as f64).sqrt() as usize;
        if side * side != embed_len || side == 0 {
            return Err(SceneError::Model(format!(
                "{}: vision_config.embed_len {embed_len} is not a square number of patches",
                dir.display()
            )));
        }
        let weights = find_weights(dir)?;
        let quantized = weights.extension().is_some_and(|e| e == "gguf");
        let (model, dtype) = if quantized {
            // candle's quantized moondream computes in f32 whatever the device.
            let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(
                &weights, &device,
            )
            .map_err(|e| err(&weights, &e))?;
            let m = quantized_moondream::Model::new(&config, vb).map_err(|e| err(&weights, &e))?;
            (Model::Quantized(m), DType::F32)
        } else {
            // Half precision only where it is fast (CUDA); CPU matmuls are f32.
            let dtype = if device.is_cuda() {
                DType::F16
            } else {
                DType::F32
            };
            // SAFETY: the file is mapped read-only and Sandra never writes an installed model
            // while it runs; candle's safetensors loader needs the mapping.
            let vb = unsafe {
                candle_nn::VarBuilder::from_mmaped_safetensors(
                    std::slice::from_ref(&weights),
                    dtype,
                    &device,
                )
            }
            .map_err(|e| err(&weights, &e))?;
            let m = moondream::Model::new(&config, vb).map_err(|e| err(&weights, &e))?;
            (Model::Full(m), dtype)
        };
        let description = format!(
            "{ARCHITECTURE} ({}, {})",
            weights
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            crate::device::device_name(&device)
        );
        tracing::info!(model = %description, "vision-language model loaded");
        Ok(Self {
            model,
            tokenizer,
            device,
            dtype,
            image_side: (side * PATCH) as u32,
            embed_len,
            context,
            bos: special,
            eos: special,
            description,
        })
    }

    /// What was loaded, for logs: architecture, weights file, device.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Describes the image, or answers `question` about it, in at most `max_tokens` tokens.
    pub fn answer(
        &mut self,
        image: &::image::RgbImage,
        question: Option<&str>,
        max_tokens: usize,
    ) -> Result<String, SceneError> {
        Ok(self.generate(image, question, max_tokens)?.text)
    }

    /// [`Self::answer`] with how the answer ended. Greedy: the same image and question give the
    /// same answer. Stops early, with an error, when the job's caller stopped waiting.
    pub fn generate(
        &mut self,
        image: &::image::RgbImage,
        question: Option<&str>,
        max_tokens: usize,
    ) -> Result<SceneAnswer, SceneError> {
        let inf = |e: candle_core::Error| SceneError::Inference(e.to_string());
        // moondream2's prompt; the question goes through the tokenizer as plain text, so a user
        // cannot write a control token (`<|endoftext|>`) into it.
        let prompt = format!("\n\nQuestion: {}\n\nAnswer:", question_or_caption(question));
        let mut ids = crate::chat::tokenizer::encode_plain(&self.tokenizer, &prompt)
            .map_err(|e| SceneError::Inference(format!("tokenizing the question: {e}")))?;
        // BOS + image + prompt + answer must fit the context the model was trained on; a question
        // too long for it loses its end (WhatsApp's caption limit makes that rare).
        let budget = self.context.saturating_sub(1 + self.embed_len);
        ids.truncate(budget.saturating_sub(1));
        let max_tokens = max_tokens.min(budget - ids.len());
        if max_tokens == 0 || ids.is_empty() {
            return Ok(SceneAnswer {
                text: String::new(),
                tokens: 0,
                finished: false,
            });
        }

        let pixels = self.pixels(image).map_err(inf)?;
        let dev = &self.device;
        let bos = Tensor::new(&[self.bos], dev)
            .and_then(|t| t.unsqueeze(0))
            .map_err(inf)?;
        let input = Tensor::new(ids.as_slice(), dev)
            .and_then(|t| t.unsqueeze(0))
            .map_err(inf)?;
        let mut logits = match &mut self.model {
            Model::Full(m) => {
                m.text_model.clear_kv_cache();
                let img = m.vision_encoder().forward(&pixels).map_err(inf)?;
                m.text_model.forward_with_img(&bos, &input, &img)
            }
            Model::Quantized(m) => {
                m.text_model.clear_kv_cache();
                let img = m.vision_encoder().forward(&pixels).map_err(inf)?;
                m.text_model.forward_with_img(&bos, &input, &img)
            }
        }
        .map_err(inf)?;

        let mut out: Vec<u32> = Vec::new();
        let mut text = String::new();
        let mut tokens = 0;
        let mut finished = false;
        while tokens < max_tokens {
            if crate::worker::cancelled() {
                return Err(SceneError::Inference("cancelled".into()));
            }
            let next = logits
                .squeeze(0)
                .and_then(|l| l.to_dtype(DType::F32))
                .and_then(|l| l.argmax(0))
                .and_then(|l| l.to_scalar::<u32>())
                .map_err(inf)?;
            tokens += 1;
            if next == self.eos {
                finished = true;
                break;
            }
            out.push(next);
            // Decoding the whole answer each step keeps multi-byte characters split across
            // tokens intact; answers are short, so this costs nothing next to a forward pass.
            text = self
                .tokenizer
                .decode(&out, true)
                .map_err(|e| SceneError::Inference(format!("decoding: {e}")))?;
            if let Some(end) = text.find(END_MARKER) {
                text.truncate(end);
                finished = true;
                break;
            }
            if tokens == max_tokens {
                break;
            }
            let step = Tensor::new(&[next], dev)
                .and_then(|t| t.unsqueeze(0))
                .map_err(inf)?;
            logits = match &mut self.model {
                Model::Full(m) => m.text_model.forward(&step),
                Model::Quantized(m) => m.text_model.forward(&step),
            }
            .map_err(inf)?;
        }
        if !finished {
            // Cut off by max_tokens in the middle of the end marker: the start of it is no text.
            if let Some(cut) = (1..END_MARKER.len())
                .rev()
                .find(|n| text.ends_with(&END_MARKER[..*n]))
            {
                text.truncate(text.len() - cut);
            }
        }
        Ok(SceneAnswer {
            text: text.trim().to_string(),
            tokens,
            finished,
        })
    }

    /// The image as the encoder expects it: resized (not cropped, as moondream2 was trained) to
    /// the encoder's square side with a bicubic filter, channels first, scaled to [-1, 1]
    /// (mean 0.5, std 0.5), batch of one.
    fn pixels(&self, image: &::image::RgbImage) -> candle_core::Result<Tensor> {
        let side = self.image_side;
        let resized =
            ::image::imageops::resize(image, side, side, ::image::imageops::FilterType::CatmullRom);
        let s = side as usize;
        Tensor::from_vec(resized.into_raw(), (s, s, 3), &Device::Cpu)?
            .permute((2, 0, 1))?
            .to_dtype(DType::F32)?
            .affine(2.0 / 255.0, -1.0)?
            .unsqueeze(0)?
            .to_device(&self.device)?
            .to_dtype(self.dtype)
    }
}

/// The model config, its number of image embeddings and its context, from the descriptor or
/// moondream2's defaults.
fn read_config(dir: &Path) -> Result<(moondream::Config, usize, usize), SceneError> {
    let path = dir.join(DESCRIPTOR_FILE);
    let bad = |e: &dyn std::fmt::Display| SceneError::Model(format!("{}: {e}", path.display()));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((moondream::Config::v2(), V2_EMBED_LEN, V2_CONTEXT));
        }
        Err(e) => return Err(bad(&e)),
    };
    let d: Descriptor = serde_json::from_str(&text).map_err(|e| bad(&e))?;
    if d.architecture != ARCHITECTURE {
        return Err(bad(&format!(
            "architecture `{}` is not supported (only `{ARCHITECTURE}`)",
            d.architecture
        )));
    }
    let Some(value) = d.config else {
        return Ok((moondream::Config::v2(), V2_EMBED_LEN, V2_CONTEXT));
    };
    // candle's config fields are crate-private: the two this loader needs are read from the JSON.
    let field = |section: &str, key: &str| {
        value[section][key]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| bad(&format!("config.{section}.{key} is missing")))
    };
    let embed_len = field("vision_config", "embed_len")?;
    let context = field("phi_config", "n_positions")?;
    let config: moondream::Config = serde_json::from_value(value).map_err(|e| bad(&e))?;
    Ok((config, embed_len, context))
}

/// The weights file: a `*.gguf` (quantized) when there is one, else `model.safetensors`.
fn find_weights(dir: &Path) -> Result<PathBuf, SceneError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| SceneError::Model(format!("{}: {e}", dir.display())))?;
    let mut gguf: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    gguf.sort();
    if let Some(p) = gguf.into_iter().next() {
        return Ok(p);
    }
    let st = dir.join("model.safetensors");
    if st.is_file() {
        return Ok(st);
    }
    Err(SceneError::Model(format!(
        "{}: no model.safetensors or *.gguf",
        dir.display()
    )))
}
