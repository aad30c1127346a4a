//! A tiny random-weight Whisper for tests (this crate's and the app's): safetensors +
//! config.json + a tiny tokenizer.json written through candle, loadable by the real
//! [`crate::whisper::Transcriber::load`] path. Not used at run time.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;

use crate::whisper::Config;
use crate::whisper::model::sinusoids;

pub const WORDS: usize = 40;
pub const LANGS: [&str; 3] = ["en", "es", "de"];

/// Specials after the words, in Whisper's order.
pub fn specials() -> Vec<String> {
    let mut s = vec![
        "<|endoftext|>".to_string(),
        "<|startoftranscript|>".to_string(),
    ];
    s.extend(LANGS.iter().map(|l| format!("<|{l}|>")));
    s.extend(
        [
            "<|translate|>",
            "<|transcribe|>",
            "<|startoflm|>",
            "<|startofprev|>",
            "<|nospeech|>",
            "<|notimestamps|>",
            "<|0.00|>",
            "<|0.02|>",
        ]
        .map(String::from),
    );
    s
}

pub fn tiny_config() -> Config {
    Config {
        num_mel_bins: 80,
        max_source_positions: 1500,
        d_model: 64,
        encoder_attention_heads: 2,
        encoder_layers: 2,
        encoder_ffn_dim: 256,
        vocab_size: WORDS + specials().len(),
        max_target_positions: 64,
        decoder_attention_heads: 2,
        decoder_layers: 2,
        decoder_ffn_dim: 256,
        suppress_tokens: vec![3, 5],
        begin_suppress_tokens: vec![1],
    }
}

pub fn write_tokenizer(path: &Path) {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), json!(0));
    for i in 1..WORDS {
        vocab.insert(format!("w{i}"), json!(i));
    }
    let mut added = Vec::new();
    for (k, s) in specials().iter().enumerate() {
        let id = WORDS + k;
        vocab.insert(s.clone(), json!(id));
        added.push(
            json!({"id": id, "content": s, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}),
        );
    }
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(path, serde_json::to_string(&tok).unwrap()).unwrap();
}

/// Random weights under Hugging Face names; the encoder position table is the sinusoid one
/// (candle's stock model computes it instead of loading it).
pub fn tiny_weights(cfg: &Config, seed: u64) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let d = cfg.d_model;
    let mut w = HashMap::new();
    // candle's CPU device cannot be seeded: a small deterministic generator (xorshift64 +
    // Box-Muller) keeps the weights reproducible.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut rnd = |name: String, shape: &[usize], std: f64| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2) = (uniform(), uniform());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
            })
            .collect();
        w.insert(name, Tensor::from_vec(v, shape, &dev).unwrap());
    };
    let ln = |rnd: &mut dyn FnMut(String, &[usize], f64), p: &str| {
        rnd(format!("{p}.weight"), &[d], 0.1);
        rnd(format!("{p}.bias"), &[d], 0.1);
    };
    rnd(
        "model.encoder.conv1.weight".into(),
        &[d, cfg.num_mel_bins, 3],
        0.1,
    );
    rnd("model.encoder.conv1.bias".into(), &[d], 0.1);
    rnd("model.encoder.conv2.weight".into(), &[d, d, 3], 0.1);
    rnd("model.encoder.conv2.bias".into(), &[d], 0.1);
    rnd(
        "model.decoder.embed_tokens.weight".into(),
        &[cfg.vocab_size, d],
        1.0,
    );
    rnd(
        "model.decoder.embed_positions.weight".into(),
        &[cfg.max_target_positions, d],
        1.0,
    );
    ln(&mut rnd, "model.encoder.layer_norm");
    ln(&mut rnd, "model.decoder.layer_norm");
    for (side, n, cross) in [
        ("encoder", cfg.encoder_layers, false),
        ("decoder", cfg.decoder_layers, true),
    ] {
        for i in 0..n {
            let p = format!("model.{side}.layers.{i}");
            let attn = |rnd: &mut dyn FnMut(String, &[usize], f64), a: &str| {
                for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    rnd(format!("{p}.{a}.{proj}.weight"), &[d, d], 0.5);
                    if proj != "k_proj" {
                        rnd(format!("{p}.{a}.{proj}.bias"), &[d], 0.1);
                    }
                }
            };
            attn(&mut rnd, "self_attn");
            ln(&mut rnd, &format!("{p}.self_attn_layer_norm"));
            if cross {
                attn(&mut rnd, "encoder_attn");
                ln(&mut rnd, &format!("{p}.encoder_attn_layer_norm"));
            }
            rnd(format!("{p}.fc1.weight"), &[256, d], 0.2);
            rnd(format!("{p}.fc1.bias"), &[256], 0.1);
            rnd(format!("{p}.fc2.weight"), &[d, 256], 0.5);
            rnd(format!("{p}.fc2.bias"), &[d], 0.1);
            ln(&mut rnd, &format!("{p}.final_layer_norm"));
        }
    }
    // LayerNorm gains around 1, not 0.
    for (k, t) in w.iter_mut() {
        if k.contains("layer_norm.weight") {
            *t = (t.clone() + 1.0).unwrap();
        }
    }
    let pos = sinusoids(cfg.max_source_positions, d);
    w.insert(
        "model.encoder.embed_positions.weight".into(),
        Tensor::from_vec(pos, (cfg.max_source_positions, d), &dev).unwrap(),
    );
    w
}

pub fn write_tiny_model(dir: &Path, seed: u64) -> Config {
    let cfg = tiny_config();
    let w = tiny_weights(&cfg, seed);
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    write_tokenizer(&dir.join("tokenizer.json"));
    cfg
}

/// Speaks `text` with espeak-ng (`voice`, e.g. "en" or "es") and encodes it with opusenc into an
/// Ogg/Opus voice note like WhatsApp's. `None` when the tools are missing
/// (`scripts/install-test-deps.sh` installs them). The scratch files are removed before returning.
pub fn spoken_voice_note(text: &str, voice: &str) -> Option<Vec<u8>> {
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let stem = std::env::temp_dir().join(format!(
        "sandra-spoken-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let (wav, opus) = (stem.with_extension("wav"), stem.with_extension("opus"));
    let ok = Command::new("espeak-ng")
        .args(["-v", voice, "-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("opusenc")
            .arg("--quiet")
            .arg(&wav)
            .arg(&opus)
            .status()
            .is_ok_and(|s| s.success());
    let bytes = if ok { std::fs::read(&opus).ok() } else { None };
    let _ = std::fs::remove_file(&wav);
    let _ = std::fs::remove_file(&opus);
    bytes
}
