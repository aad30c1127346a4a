//! A tiny random-weight Whisper, built here through candle (safetensors + config.json + a tiny
//! tokenizer.json), loaded through the real loading code. The key check: the KV-cached decoder
//! produces the same logits and the same greedy tokens as a full no-cache forward pass. Also the
//! layout against candle-transformers' stock Whisper, GGUF quantization, 30 s windows, load
//! errors, and the CTranslate2 converter on a fake `model.bin`.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use sandra_models::whisper::ct2::{Ct2DType, Ct2Model};
use sandra_models::whisper::{
    Config, DecodeMode, Transcriber, WhisperError, WhisperModel, WhisperOptions, ct2, gguf,
};
use serde_json::json;

use sandra_models::testing_whisper::*;

fn speechlike(seconds: f32) -> Vec<f32> {
    let n = (seconds * 16_000.0) as usize;
    (0..n)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            0.3 * (2.0 * std::f32::consts::PI * (220.0 + 80.0 * (3.0 * t).sin()) * t).sin()
                * (0.5 + 0.5 * (5.0 * t).sin())
        })
        .collect()
}

fn opts(max_new: usize) -> WhisperOptions {
    WhisperOptions {
        max_new_tokens: Some(max_new),
        threads: Some(2),
        ..Default::default()
    }
}

/// Every weight f32, as the file has it.
fn f32_opts(max_new: usize) -> WhisperOptions {
    WhisperOptions {
        decoder_q8: false,
        ..opts(max_new)
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `tol` is relative to the largest logit; `exact_greedy` also demands identical greedy decodes
/// (quantized kernels may take another path for one row than for many, so near-ties can flip).
fn assert_cache_matches_reference(model: &WhisperModel, tol: f32, exact_greedy: bool) {
    let w = model.whisper();
    let mel = model.mel_tensor(&speechlike(3.0)).unwrap();
    let audio = w.encoder.forward(&mel).unwrap();
    // Teacher-forced: the logits after every prefix, cached vs recomputed.
    let sot = (WORDS + 1) as u32;
    let prompt = [
        sot,
        sot + 1,
        sot + 1 + LANGS.len() as u32 + 1,
        (WORDS + 10) as u32,
    ];
    let forced: Vec<u32> = (0..30).map(|i| 1 + (i * 7 % (WORDS as u32 - 1))).collect();
    let mut state = w.decoder.start(&audio).unwrap();
    let mut seq = prompt.to_vec();
    let mut cached = w.decoder.step(&mut state, &prompt).unwrap();
    for &t in &forced {
        let reference = w.decoder.logits_no_cache(&audio, &seq).unwrap();
        let scale = reference
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = max_abs_diff(&cached, &reference) / scale.max(1.0);
        assert!(
            diff < tol,
            "position {}: cached vs full differ by {diff}",
            seq.len()
        );
        seq.push(t);
        cached = w.decoder.step(&mut state, &[t]).unwrap();
    }
    // Greedy: identical token sequences, with language detection in the loop.
    let samples = speechlike(3.0);
    let (a, la) = model
        .window_tokens(&samples, None, DecodeMode::Cached)
        .unwrap();
    let (b, lb) = model
        .window_tokens(&samples, None, DecodeMode::NoCacheReference)
        .unwrap();
    assert_eq!(la, lb);
    if exact_greedy {
        assert_eq!(a, b, "cached and reference greedy decodes differ");
    } else {
        let same = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        println!(
            "quantized: {same} of {} greedy tokens agree before the first difference",
            a.len()
        );
    }
    assert!(!a.is_empty());
    // Suppressed tokens never appear; specials/timestamps neither.
    assert!(a.iter().all(|&t| t != 3 && t != 5 && (t as usize) < WORDS));
    println!("greedy tokens ({}): {a:?}", a.len());
    let distinct: std::collections::BTreeSet<_> = a.iter().collect();
    assert!(distinct.len() >= 3, "degenerate greedy decode {a:?}");
}

#[test]
fn kv_cache_decoder_matches_no_cache_reference() {
    let dir = tempfile::tempdir().unwrap();
    // Seed chosen so greedy decoding does not collapse into one repeated token.
    write_tiny_model(dir.path(), 11);
    let model = WhisperModel::load(dir.path(), &opts(40)).unwrap();
    assert_cache_matches_reference(&model, 1e-4, true);
}

#[test]
fn quantized_gguf_loads_and_its_cache_matches_too() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 11);
    let dense = WhisperModel::load(dir.path(), &f32_opts(40)).unwrap();
    gguf::quantize_dir(
        dir.path(),
        &dir.path().join("model.gguf"),
        gguf::QuantPlan::default(),
    )
    .unwrap();
    let q = WhisperModel::load(
        dir.path(),
        &WhisperOptions {
            prefer_gguf: true,
            ..opts(40)
        },
    )
    .unwrap();
    assert_cache_matches_reference(&q, 0.02, false);
    // q8_0 stays close to the dense model.
    let mel = dense.mel_tensor(&speechlike(2.0)).unwrap();
    let a = dense.whisper().encoder.forward(&mel).unwrap();
    let b = q.whisper().encoder.forward(&mel).unwrap();
    assert!(max_abs_diff(&a, &b) < 0.05);
    let toks = [(WORDS + 1) as u32, (WORDS + 2) as u32, 4, 9];
    let la = dense.whisper().decoder.logits_no_cache(&a, &toks).unwrap();
    let lb = q.whisper().decoder.logits_no_cache(&a, &toks).unwrap();
    let scale = la
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max_abs_diff(&la, &lb) < 0.05 * scale.max(1.0));
}

/// The default decoder (q8_0 matrices quantized on load) stays close to the f32 one, and its
/// cache still matches its own uncached path.
#[test]
fn q8_decoder_stays_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 13);
    let dense = WhisperModel::load(dir.path(), &f32_opts(40)).unwrap();
    let q8 = WhisperModel::load(dir.path(), &opts(40)).unwrap();
    assert_cache_matches_reference(&q8, 0.02, false);
    let mel = dense.mel_tensor(&speechlike(2.0)).unwrap();
    let a = dense.whisper().encoder.forward(&mel).unwrap();
    // The encoder is f32 in both.
    assert_eq!(
        max_abs_diff(&a, &q8.whisper().encoder.forward(&mel).unwrap()),
        0.0
    );
    let toks = [(WORDS + 1) as u32, (WORDS + 2) as u32, 4, 9];
    let la = dense.whisper().decoder.logits_no_cache(&a, &toks).unwrap();
    let lb = q8.whisper().decoder.logits_no_cache(&a, &toks).unwrap();
    let scale = la
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_abs_diff(&la, &lb);
    assert!(
        d < 0.05 * scale.max(1.0),
        "q8 logits off by {d} (scale {scale})"
    );
    assert_eq!(
        la.argmax(0).unwrap().to_scalar::<u32>().unwrap(),
        lb.argmax(0).unwrap().to_scalar::<u32>().unwrap()
    );
}

/// Same weights through candle-transformers' stock Whisper: the layout and names agree.
#[test]
fn agrees_with_candle_transformers_stock_model() {
    use candle_transformers::models::whisper as stock;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_tiny_model(dir.path(), 3);
    let ours = WhisperModel::load(dir.path(), &f32_opts(10)).unwrap();
    let stock_cfg: stock::Config =
        serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.path().join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let mut theirs = stock::model::Whisper::load(&vb, stock_cfg).unwrap();
    let mel = ours.mel_tensor(&speechlike(2.0)).unwrap();
    let a = ours.whisper().encoder.forward(&mel).unwrap();
    let b = theirs.encoder.forward(&mel, true).unwrap();
    // The stock model uses tanh-approximated GELU, ours the exact one Whisper was trained with.
    let d = max_abs_diff(&a, &b);
    assert!(d < 0.05, "encoder outputs differ by {d}");
    let toks = [(WORDS + 1) as u32, (WORDS + 2) as u32, 4, 9, 17];
    let la = ours.whisper().decoder.logits_no_cache(&a, &toks).unwrap();
    let t = Tensor::new(&toks[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let h = theirs.decoder.forward(&t, &a, true).unwrap();
    let lb = theirs
        .decoder
        .final_linear(&h)
        .unwrap()
        .i((0, toks.len() - 1))
        .unwrap();
    let d = max_abs_diff(&la, &lb);
    assert!(d < 0.05, "decoder logits differ by {d}");
}

#[tokio::test]
async fn transcriber_loads_and_transcribes_in_windows() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), 5);
    let t = Transcriber::load(dir.path(), opts(8), 2).unwrap();
    fn send_sync<T: Send + Sync + Clone>(_: &T) {}
    send_sync(&t);
    let short = t.transcribe(speechlike(1.5)).await.unwrap();
    assert!((short.audio_seconds - 1.5).abs() < 1e-3);
    assert!(
        short
            .language
            .as_deref()
            .is_some_and(|l| LANGS.contains(&l))
    );
    assert!(!short.text.is_empty());
    // 65 s: three windows (30 + 30 + 5).
    let long = t.transcribe(speechlike(65.0)).await.unwrap();
    assert!(long.text.split(' ').count() > short.text.split(' ').count());
    assert!(t.transcribe(Vec::new()).await.unwrap().text.is_empty());
    // Digital silence is not handed to the model (which would invent words for it).
    let silent = t.transcribe(vec![0.0; 48_000]).await.unwrap();
    assert_eq!((silent.text.as_str(), silent.audio_seconds), ("", 3.0));

    // Encoder context trimmed to the audio: a shorter encoder input, same decoding path.
    let trimmed = Transcriber::load(
        dir.path(),
        WhisperOptions {
            encoder_trim_margin_ms: Some(1000),
            ..opts(8)
        },
        1,
    )
    .unwrap();
    let out = trimmed.transcribe(speechlike(1.5)).await.unwrap();
    assert!(!out.text.is_empty());

    // A configured language skips detection and is reported.
    let es = Transcriber::load(
        dir.path(),
        WhisperOptions {
            language: Some("es".into()),
            ..opts(4)
        },
        1,
    )
    .unwrap();
    assert_eq!(
        es.transcribe(speechlike(1.0))
            .await
            .unwrap()
            .language
            .as_deref(),
        Some("es")
    );
}

#[test]
fn load_errors_name_the_path_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let e = Transcriber::load(&dir.path().join("nope"), WhisperOptions::default(), 1)
        .err()
        .unwrap();
    assert!(matches!(e, WhisperError::Load { .. }));
    assert!(e.to_string().contains("nope"), "{e}");
    write_tiny_model(dir.path(), 1);
    std::fs::write(dir.path().join("config.json"), "{").unwrap();
    let e = Transcriber::load(dir.path(), WhisperOptions::default(), 1)
        .err()
        .unwrap();
    assert!(e.to_string().contains("config.json"), "{e}");
    write_tiny_model(dir.path(), 1);
    let bad_lang = WhisperOptions {
        language: Some("xx".into()),
        ..Default::default()
    };
    assert!(Transcriber::load(dir.path(), bad_lang, 1).is_err());
    let opts: WhisperOptions =
        serde_json::from_str(r#"{"language":"es","threads":2,"device":"cpu"}"#).unwrap();
    assert_eq!(opts.threads, Some(2));
}

// --- CTranslate2 converter ---

struct Ct2Writer {
    vars: Vec<(String, Vec<usize>, Ct2DType, Vec<u8>)>,
}

fn ct2_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

impl Ct2Writer {
    fn tensor(&mut self, name: &str, t: &Tensor, dtype: Ct2DType) {
        let dims = t.dims().to_vec();
        let data: Vec<u8> = match dtype {
            Ct2DType::F32 => t
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            Ct2DType::F16 => t
                .to_dtype(DType::F16)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<half::f16>()
                .unwrap()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            _ => unreachable!(),
        };
        self.vars.push((name.into(), dims, dtype, data));
    }

    fn scalar_i16(&mut self, name: &str, v: i16) {
        self.vars
            .push((name.into(), vec![], Ct2DType::I16, v.to_le_bytes().to_vec()));
    }

    fn bytes(&self, aliases: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        ct2_string(&mut out, "WhisperSpec");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.vars.len() as u32).to_le_bytes());
        for (name, dims, dtype, data) in &self.vars {
            ct2_string(&mut out, name);
            out.push(dims.len() as u8);
            for d in dims {
                out.extend_from_slice(&(*d as u32).to_le_bytes());
            }
            out.push(dtype.id());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
        for (a, t) in aliases {
            ct2_string(&mut out, a);
            ct2_string(&mut out, t);
        }
        out
    }
}

/// HF weights → a CTranslate2 `model.bin` (fused projections, zero k biases, CT2 names).
fn to_ct2(w: &HashMap<String, Tensor>, cfg: &Config) -> Ct2Writer {
    let mut c = Ct2Writer { vars: Vec::new() };
    let d = cfg.d_model;
    let zeros = Tensor::zeros(d, DType::F32, &Device::Cpu).unwrap();
    let g = |n: &str| w[n].clone();
    let ln = |c: &mut Ct2Writer, dst: &str, src: &str| {
        c.tensor(
            &format!("{dst}/gamma"),
            &g(&format!("{src}.weight")),
            Ct2DType::F32,
        );
        c.tensor(
            &format!("{dst}/beta"),
            &g(&format!("{src}.bias")),
            Ct2DType::F32,
        );
    };
    let lin = |c: &mut Ct2Writer, dst: &str, src: &str| {
        c.tensor(
            &format!("{dst}/weight"),
            &g(&format!("{src}.weight")),
            Ct2DType::F16,
        );
        c.tensor(
            &format!("{dst}/bias"),
            &g(&format!("{src}.bias")),
            Ct2DType::F32,
        );
    };
    lin(&mut c, "encoder/conv1", "model.encoder.conv1");
    lin(&mut c, "encoder/conv2", "model.encoder.conv2");
    c.tensor(
        "encoder/position_encodings/encodings",
        &g("model.encoder.embed_positions.weight"),
        Ct2DType::F16,
    );
    c.tensor(
        "decoder/position_encodings/encodings",
        &g("model.decoder.embed_positions.weight"),
        Ct2DType::F16,
    );
    c.tensor(
        "decoder/embeddings/weight",
        &g("model.decoder.embed_tokens.weight"),
        Ct2DType::F16,
    );
    ln(&mut c, "encoder/layer_norm", "model.encoder.layer_norm");
    ln(&mut c, "decoder/layer_norm", "model.decoder.layer_norm");
    c.scalar_i16("encoder/num_heads", cfg.encoder_attention_heads as i16);
    c.scalar_i16("decoder/num_heads", cfg.decoder_attention_heads as i16);
    for (side, n) in [
        ("encoder", cfg.encoder_layers),
        ("decoder", cfg.decoder_layers),
    ] {
        for i in 0..n {
            let s = format!("{side}/layer_{i}");
            let h = format!("model.{side}.layers.{i}");
            let qkv = Tensor::cat(
                &[
                    g(&format!("{h}.self_attn.q_proj.weight")),
                    g(&format!("{h}.self_attn.k_proj.weight")),
                    g(&format!("{h}.self_attn.v_proj.weight")),
                ],
                0,
            )
            .unwrap();
            let qkv_b = Tensor::cat(
                &[
                    g(&format!("{h}.self_attn.q_proj.bias")),
                    zeros.clone(),
                    g(&format!("{h}.self_attn.v_proj.bias")),
                ],
                0,
            )
            .unwrap();
            c.tensor(
                &format!("{s}/self_attention/linear_0/weight"),
                &qkv,
                Ct2DType::F16,
            );
            c.tensor(
                &format!("{s}/self_attention/linear_0/bias"),
                &qkv_b,
                Ct2DType::F32,
            );
            lin(
                &mut c,
                &format!("{s}/self_attention/linear_1"),
                &format!("{h}.self_attn.out_proj"),
            );
            ln(
                &mut c,
                &format!("{s}/self_attention/layer_norm"),
                &format!("{h}.self_attn_layer_norm"),
            );
            lin(&mut c, &format!("{s}/ffn/linear_0"), &format!("{h}.fc1"));
            lin(&mut c, &format!("{s}/ffn/linear_1"), &format!("{h}.fc2"));
            ln(
                &mut c,
                &format!("{s}/ffn/layer_norm"),
                &format!("{h}.final_layer_norm"),
            );
            if side == "decoder" {
                lin(
                    &mut c,
                    &format!("{s}/attention/linear_0"),
                    &format!("{h}.encoder_attn.q_proj"),
                );
                let kv = Tensor::cat(
                    &[
                        g(&format!("{h}.encoder_attn.k_proj.weight")),
                        g(&format!("{h}.encoder_attn.v_proj.weight")),
                    ],
                    0,
                )
                .unwrap();
                let kv_b = Tensor::cat(
                    &[zeros.clone(), g(&format!("{h}.encoder_attn.v_proj.bias"))],
                    0,
                )
                .unwrap();
                c.tensor(
                    &format!("{s}/attention/linear_1/weight"),
                    &kv,
                    Ct2DType::F16,
                );
                c.tensor(
                    &format!("{s}/attention/linear_1/bias"),
                    &kv_b,
                    Ct2DType::F32,
                );
                lin(
                    &mut c,
                    &format!("{s}/attention/linear_2"),
                    &format!("{h}.encoder_attn.out_proj"),
                );
                ln(
                    &mut c,
                    &format!("{s}/attention/layer_norm"),
                    &format!("{h}.encoder_attn_layer_norm"),
                );
            }
        }
    }
    c
}

#[test]
fn ct2_converter_parses_and_maps_names() {
    let cfg = tiny_config();
    let w = tiny_weights(&cfg, 21);
    let src = tempfile::tempdir().unwrap();
    let bin = to_ct2(&w, &cfg).bytes(&[("decoder/projection/weight", "decoder/embeddings/weight")]);
    std::fs::write(src.path().join("model.bin"), &bin).unwrap();
    std::fs::write(
        src.path().join("config.json"),
        json!({"suppress_ids": [3, 5], "suppress_ids_begin": [1], "lang_ids": []}).to_string(),
    )
    .unwrap();
    write_tokenizer(&src.path().join("tokenizer.json"));

    let parsed = Ct2Model::parse(&bin).unwrap();
    assert_eq!(parsed.spec, "WhisperSpec");
    assert_eq!(
        parsed.aliases["decoder/projection/weight"],
        "decoder/embeddings/weight"
    );
    assert!(
        Ct2Model::parse(&bin[..bin.len() / 2]).is_err(),
        "truncated file must fail"
    );

    let out = tempfile::tempdir().unwrap();
    let got = ct2::convert_with(
        &src.path().join("model.bin"),
        &src.path().join("config.json"),
        out.path(),
        ct2::OutDType::F32,
    )
    .unwrap();
    assert_eq!(got, cfg, "config derived from shapes and CT2 config");
    let conv =
        candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(conv.len(), w.len(), "same tensor set");
    for (name, t) in &w {
        let c = conv.get(name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(c.dims(), t.dims(), "{name}");
        // f16 round trip for matrices, exact for f32 vectors.
        let d = max_abs_diff(c, t);
        assert!(d < 5e-3, "{name}: {d}");
    }
    assert!(out.path().join("tokenizer.json").is_file());
    // The converted directory loads and decodes like the original.
    let a = WhisperModel::load(out.path(), &opts(10)).unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    write_tiny_model(b_dir.path(), 21);
    let b = WhisperModel::load(b_dir.path(), &opts(10)).unwrap();
    let mel = a.mel_tensor(&speechlike(2.0)).unwrap();
    let ea = a.whisper().encoder.forward(&mel).unwrap();
    let eb = b.whisper().encoder.forward(&mel).unwrap();
    assert!(max_abs_diff(&ea, &eb) < 0.05);
    // f16 output through the installer.
    let inst = tempfile::tempdir().unwrap();
    sandra_models::install::install_from_ct2_dir(src.path(), inst.path()).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(inst.path().join(f).is_file(), "{f}");
    }
    WhisperModel::load(inst.path(), &opts(4)).unwrap();
    let _ = std::fs::remove_file(src.path().join("tokenizer.json"));
    // Not a Whisper spec → clear error.
    let mut other = bin.clone();
    other[6..13].copy_from_slice(b"Whispxx");
    std::fs::write(src.path().join("model.bin"), &other).unwrap();
    let e = ct2::convert(
        &src.path().join("model.bin"),
        &src.path().join("config.json"),
        out.path(),
    );
    assert!(e.is_err());
}
