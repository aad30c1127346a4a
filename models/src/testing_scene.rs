//! A tiny random-weight moondream2 for tests: a descriptor with a tiny config, weights as
//! safetensors (written from the real model's own variables, so every name and shape is the one
//! the loader asks for) or as a quantized GGUF, and a byte-level BPE tokenizer.json. Loadable by
//! the real [`crate::vision::scene::LocalScene::load`]. Not used at run time.
//!
//! candle's moondream hard-codes the vision transformer's width (588 → 1152), so the tiny model is
//! tiny everywhere else: one vision block, 4 patches (a 28×28 image), a 2-layer 64-wide decoder.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::moondream;

use crate::testing::{Behaviour, Family, vocab};
use crate::vision::scene::DESCRIPTOR_FILE;

/// How the weights are stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Weights {
    /// `model.safetensors`, f32.
    Safetensors,
    /// `model-q8_0.gguf`: Q8_0 where a row is whole 32-blocks, f32 elsewhere.
    Gguf,
}

/// The tiny model's text context, as its descriptor declares it.
pub const CONTEXT: usize = 96;
/// Image patches (2 × 2 of 14 px: the encoder takes 28×28 images).
pub const EMBED_LEN: usize = 4;
/// The text end marker moondream2 writes; the tiny vocabulary has it as one token.
pub const END_MARKER: &str = "<END>";

/// What a test needs to know of the written model.
pub struct TinyScene {
    /// Token ids of the tokenizer, by text.
    pub ids: HashMap<String, u32>,
    /// `<|endoftext|>`, the BOS and EOS token.
    pub eos: u32,
}

impl TinyScene {
    pub fn id(&self, t: &str) -> u32 {
        self.ids[t]
    }
}

/// The descriptor's config: moondream's two sections, at the tiny size.
fn config_json(vocab_size: usize) -> serde_json::Value {
    serde_json::json!({
        "phi_config": {
            "vocab_size": vocab_size,
            "n_positions": CONTEXT,
            "n_embd": 64,
            "n_layer": 2,
            "n_inner": null,
            "n_head": 4,
            "rotary_dim": 16,
            "activation_function": "gelu",
            "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": false,
            "pad_vocab_size_multiple": 1
        },
        "vision_config": {
            "image_embedding_dim": 1152,
            "model_dim": 64,
            "hidden_dim": 32,
            "hidden_features": 32,
            "embed_len": EMBED_LEN,
            "embed_dim": 1152,
            "num_blocks": 1,
            "num_heads": 4,
            "act": "gelu_pytorch_tanh"
        }
    })
}

/// Writes the tiny model into `dir` (descriptor, weights, tokenizer.json). Deterministic for a
/// given `seed`. `Behaviour::AlwaysEmit(t)` makes the decoder's head pick `t` at every step.
pub fn write_scene_model(
    dir: &Path,
    weights: Weights,
    behaviour: Behaviour,
    seed: u64,
) -> TinyScene {
    std::fs::create_dir_all(dir).unwrap();
    let dev = Device::Cpu;
    // The chat tests' byte-level vocabulary (its `<|endoftext|>` is moondream's BOS/EOS) plus
    // the end marker as a single ordinary token.
    let mut v = vocab(Family::Qwen2);
    v.tokens.push(END_MARKER.to_string());
    v.types.push(1);
    let n_vocab = v.tokens.len();
    let ids: HashMap<String, u32> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let eos = ids["<|endoftext|>"];

    let s = |x: &str| Value::String(x.to_string());
    let md: HashMap<String, Value> = [
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("default")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(v.tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(v.types.iter().map(|t| Value::I32(*t)).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(v.merges.iter().map(|m| s(m)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(eos)),
        ("tokenizer.ggml.eos_token_id", Value::U32(eos)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let tok = crate::chat::tokenizer::from_gguf(&md).unwrap();
    tok.save(dir.join("tokenizer.json"), false).unwrap();

    let cfg_value = config_json(n_vocab);
    let descriptor = serde_json::json!({"architecture": "moondream2", "config": cfg_value});
    std::fs::write(
        dir.join(DESCRIPTOR_FILE),
        serde_json::to_vec_pretty(&descriptor).unwrap(),
    )
    .unwrap();

    // Building the real model over a VarMap creates every variable it reads, by name and shape.
    let cfg: moondream::Config = serde_json::from_value(cfg_value).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    moondream::Model::new(&cfg, vb).unwrap();

    // Deterministic normal-ish values (xorshift + sum of uniforms), so files are reproducible.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut randn = |n: usize, std: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                let mut acc = 0f32;
                for _ in 0..4 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    acc += (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                acc * std * 1.732
            })
            .collect()
    };
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    let data = varmap.data().lock().unwrap();
    for name in &names {
        let var = &data[name];
        // Norms keep their ones/zeros; everything else is random at a scale that keeps
        // activations finite through the layers.
        if name.contains("norm") || name.contains(".ln.") {
            continue;
        }
        let shape = var.shape().clone();
        let fan_in = *shape.dims().last().unwrap();
        let std = if name.ends_with("bias") {
            0.1
        } else if name.ends_with("wte.weight") || name.ends_with("pos_embed") {
            1.0
        } else {
            2.0 / (fan_in as f32).sqrt()
        };
        let t = Tensor::from_vec(randn(shape.elem_count(), std), shape, &dev).unwrap();
        var.set(&t).unwrap();
    }
    if let Behaviour::AlwaysEmit(tok) = behaviour {
        // A head that ignores the hidden state: zero weights, one huge bias.
        let w = &data["text_model.lm_head.linear.weight"];
        w.set(&w.zeros_like().unwrap()).unwrap();
        let mut b = vec![0f32; n_vocab];
        b[tok as usize] = 100.0;
        data["text_model.lm_head.linear.bias"]
            .set(&Tensor::from_vec(b, n_vocab, &dev).unwrap())
            .unwrap();
    }
    drop(data);

    match weights {
        Weights::Safetensors => varmap.save(dir.join("model.safetensors")).unwrap(),
        Weights::Gguf => {
            let data = varmap.data().lock().unwrap();
            let tensors: Vec<(String, QTensor)> = names
                .iter()
                .map(|name| {
                    let t = data[name].as_tensor().clone();
                    let dims = t.dims().to_vec();
                    // Q8_0 quantizes rows in blocks of 32; the patch embedding's 588-wide rows
                    // and every vector stay f32, as in candle's own conversion.
                    let q = if dims.len() == 2 && dims[1].is_multiple_of(32) {
                        GgmlDType::Q8_0
                    } else {
                        GgmlDType::F32
                    };
                    (name.clone(), QTensor::quantize(&t, q).unwrap())
                })
                .collect();
            let md = [("general.architecture", Value::String("moondream2".into()))];
            let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
            let t_refs: Vec<(&str, &QTensor)> =
                tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
            let mut file = std::fs::File::create(dir.join("model-q8_0.gguf")).unwrap();
            gguf_file::write(&mut file, &md_refs, &t_refs).unwrap();
        }
    }
    TinyScene { ids, eos }
}
