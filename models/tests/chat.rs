//! The local chat engine end to end on tiny random-weight GGUF models written here with candle
//! (qwen2, qwen3, llama with a ChatML vocab as SmolLM2 has, llama with a Llama-3 vocab). Each file
//! carries full tokenizer metadata (a byte-level BPE vocab with merges and control tokens) and no
//! tokenizer.json, so the GGUF-derived tokenizer is what runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use sandra_models::chat::{
    ChatEngine, ChatError, ChatMessage, ChatReply, ChatTemplate, DeviceChoice, SamplingParams,
};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Family {
    Qwen2,
    Qwen3,
    /// `llama` architecture with ChatML tokens (SmolLM2).
    SmolLm,
    /// `llama` architecture with Llama-3 header tokens.
    Llama3,
}

const ALL: [Family; 4] = [Family::Qwen2, Family::Qwen3, Family::SmolLm, Family::Llama3];

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FF: usize = 128;
const LAYERS: usize = 2;
const CONTEXT: u32 = 256;

/// GPT-2's byte → printable-char map.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        out[*b as usize] = char::from_u32(c).unwrap();
    }
    out
}

struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
}

impl Vocab {
    fn id(&self, t: &str) -> u32 {
        self.tokens.iter().position(|x| x == t).unwrap() as u32
    }
}

/// 256 byte tokens (id = position in GPT-2's byte order, so id 0 is `!`), a few merges, then the
/// family's control tokens plus `<|custom_eos|>`, which only the GGUF eos id points to.
fn vocab(family: Family) -> Vocab {
    let chars = byte_chars();
    let mut order: Vec<u8> = (0..=255u8).collect();
    order.sort_by_key(|b| chars[*b as usize]);
    let mut tokens: Vec<String> = order
        .iter()
        .map(|b| chars[*b as usize].to_string())
        .collect();
    let mut types = vec![1; tokens.len()];
    let mut merges = Vec::new();
    for (a, b) in [
        ("h", "e"),
        ("Ġ", "t"),
        ("Ġt", "he"),
        ("i", "s"),
        ("Ġ", "c"),
        ("a", "p"),
        ("Ġc", "ap"),
        ("l", "l"),
        ("he", "ll"),
        ("o", "r"),
    ] {
        merges.push(format!("{a} {b}"));
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    let specials: &[&str] = match family {
        Family::Llama3 => &[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        _ => &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    };
    for s in specials.iter().chain(&["<|custom_eos|>"]) {
        tokens.push(s.to_string());
        types.push(3);
    }
    Vocab {
        tokens,
        types,
        merges,
    }
}

/// How the weights are shaped.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Random everywhere.
    Random,
    /// The given token always wins (layers zeroed, one huge logit row).
    AlwaysEmit(u32),
}

fn q8(t: Tensor) -> QTensor {
    QTensor::quantize(&t, GgmlDType::Q8_0).unwrap()
}
fn f32q(t: Tensor) -> QTensor {
    QTensor::quantize(&t, GgmlDType::F32).unwrap()
}

/// Writes a tiny model of `family` and returns its path and vocabulary.
fn write_model(dir: &Path, family: Family, behaviour: Behaviour, seed: u64) -> (PathBuf, Vocab) {
    let dev = Device::Cpu;
    let rng = std::cell::Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let v = vocab(family);
    let n_vocab = v.tokens.len();
    let arch = match family {
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        Family::SmolLm | Family::Llama3 => "llama",
    };
    let pre = match family {
        Family::Qwen2 | Family::Qwen3 => "qwen2",
        Family::SmolLm => "smollm",
        Family::Llama3 => "llama-bpe",
    };
    let bos = match family {
        Family::Llama3 => v.id("<|begin_of_text|>"),
        _ => v.id("<|endoftext|>"),
    };
    let eos = v.id("<|custom_eos|>");
    // Deterministic normal-ish values (xorshift + sum of uniforms), so files are reproducible.
    let randn = |shape: (usize, usize), std: f32| {
        let data: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                let mut acc = 0f32;
                for _ in 0..4 {
                    let mut x = rng.get();
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    rng.set(x);
                    acc += (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                acc * std * 1.732
            })
            .collect();
        Tensor::from_vec(data, shape, &dev).unwrap()
    };
    let zero_layers = matches!(behaviour, Behaviour::AlwaysEmit(_));
    let w = |shape: (usize, usize)| {
        if zero_layers {
            q8(Tensor::zeros(shape, DType::F32, &dev).unwrap())
        } else {
            q8(randn(shape, 0.5))
        }
    };
    let ones = |n: usize| f32q(Tensor::ones(n, DType::F32, &dev).unwrap());

    let mut embd = randn((n_vocab, HIDDEN), 1.0);
    let mut out = randn((n_vocab, HIDDEN), 0.5);
    if let Behaviour::AlwaysEmit(tok) = behaviour {
        // Every embedding has a large first coordinate; only `tok`'s output row reads it.
        let mut e = embd.to_vec2::<f32>().unwrap();
        for row in e.iter_mut() {
            row[0] = 10.0;
        }
        embd = Tensor::new(e, &dev).unwrap();
        let mut o = out.to_vec2::<f32>().unwrap();
        for (i, row) in o.iter_mut().enumerate() {
            row[0] = if i == tok as usize { 100.0 } else { 0.0 };
        }
        out = Tensor::new(o, &dev).unwrap();
    }
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), q8(embd)),
        ("output.weight".into(), q8(out)),
        ("output_norm.weight".into(), ones(HIDDEN)),
    ];
    let kv = KV_HEADS * HEAD_DIM;
    for l in 0..LAYERS {
        let p = format!("blk.{l}");
        tensors.push((format!("{p}.attn_norm.weight"), ones(HIDDEN)));
        tensors.push((format!("{p}.ffn_norm.weight"), ones(HIDDEN)));
        tensors.push((format!("{p}.attn_q.weight"), w((HIDDEN, HIDDEN))));
        tensors.push((format!("{p}.attn_k.weight"), w((kv, HIDDEN))));
        tensors.push((format!("{p}.attn_v.weight"), w((kv, HIDDEN))));
        tensors.push((format!("{p}.attn_output.weight"), w((HIDDEN, HIDDEN))));
        tensors.push((format!("{p}.ffn_gate.weight"), w((FF, HIDDEN))));
        tensors.push((format!("{p}.ffn_up.weight"), w((FF, HIDDEN))));
        tensors.push((format!("{p}.ffn_down.weight"), w((HIDDEN, FF))));
        match family {
            Family::Qwen2 => {
                for (n, len) in [("q", HIDDEN), ("k", kv), ("v", kv)] {
                    let b = Tensor::zeros(len, DType::F32, &dev).unwrap();
                    tensors.push((format!("{p}.attn_{n}.bias"), f32q(b)));
                }
            }
            Family::Qwen3 => {
                tensors.push((format!("{p}.attn_q_norm.weight"), ones(HEAD_DIM)));
                tensors.push((format!("{p}.attn_k_norm.weight"), ones(HEAD_DIM)));
            }
            _ => {}
        }
    }

    let s = |x: &str| Value::String(x.to_string());
    let u = |x: usize| Value::U32(x as u32);
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(arch)),
        ("general.name".into(), s(&format!("tiny-{family:?}"))),
        ("general.file_type".into(), Value::U32(7)),
        ("general.dtype".into(), Value::U32(0)),
        (format!("{arch}.context_length"), Value::U32(CONTEXT)),
        (format!("{arch}.embedding_length"), u(HIDDEN)),
        (format!("{arch}.block_count"), u(LAYERS)),
        (format!("{arch}.feed_forward_length"), u(FF)),
        (format!("{arch}.attention.head_count"), u(HEADS)),
        (format!("{arch}.attention.head_count_kv"), u(KV_HEADS)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(10000.0)),
        (format!("{arch}.rope.dimension_count"), u(HEAD_DIM)),
        (format!("{arch}.attention.key_length"), u(HEAD_DIM)),
        (format!("{arch}.attention.value_length"), u(HEAD_DIM)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s(pre)),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(v.tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(v.types.iter().map(|t| Value::I32(*t)).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(v.merges.iter().map(|m| s(m)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
    ];
    let path = dir.join(format!("tiny-{family:?}-{seed}.gguf").to_lowercase());
    let mut file = std::fs::File::create(&path).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &md_refs, &t_refs).unwrap();
    (path, v)
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are terse."),
        ChatMessage::user("What is the capital of France?"),
    ]
}

fn load(path: &Path) -> ChatEngine {
    ChatEngine::load_local(path, DeviceChoice::Cpu, SamplingParams::default(), 4).unwrap()
}

fn sampled(seed: u64, n: usize) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        repeat_penalty: 1.1,
        repeat_last_n: 16,
        seed: Some(seed),
        max_new_tokens: n,
    }
}

#[tokio::test]
async fn every_family_loads_and_generates_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    for family in ALL {
        let (path, _) = write_model(dir.path(), family, Behaviour::Random, 1);
        let engine = load(&path);
        let d = engine.describe();
        assert!(
            d.contains("tiny-") && d.ends_with("Q8_0 (local, cpu)"),
            "{d}"
        );
        assert_eq!(engine.context_window(), CONTEXT as usize);
        assert_eq!(engine.clone().with_context_cap(100).context_window(), 100);

        // Greedy twice: same reply.
        let a = engine
            .chat_with(conversation(), SamplingParams::greedy(12))
            .await
            .unwrap();
        let b = engine
            .chat_with(conversation(), SamplingParams::greedy(12))
            .await
            .unwrap();
        assert!(a.completion_tokens > 0, "{family:?}: {a:?}");
        assert_eq!(a, b, "{family:?}");
        assert_eq!(a.prompt_tokens, engine.count_tokens(&conversation()));
        // Sampling with a seed is reproducible; another seed gives another reply.
        let s1 = engine
            .chat_with(conversation(), sampled(7, 24))
            .await
            .unwrap();
        let s2 = engine
            .chat_with(conversation(), sampled(7, 24))
            .await
            .unwrap();
        let s3 = engine
            .chat_with(conversation(), sampled(8, 24))
            .await
            .unwrap();
        assert_eq!(s1, s2, "{family:?}");
        assert_ne!(s1.text, s3.text, "{family:?}: different seeds, same text");
    }
}

#[tokio::test]
async fn max_new_tokens_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    for family in ALL {
        let (path, _) = write_model(dir.path(), family, Behaviour::AlwaysEmit(0), 2);
        let engine = load(&path);
        for n in [1, 5, 9] {
            let r = engine
                .chat_with(conversation(), SamplingParams::greedy(n))
                .await
                .unwrap();
            assert_eq!(r.completion_tokens, n, "{family:?}");
            // Token 0 is the byte '!'.
            assert_eq!(r.text, "!".repeat(n), "{family:?}");
        }
    }
}

#[tokio::test]
async fn stop_tokens_end_the_reply() {
    let dir = tempfile::tempdir().unwrap();
    for family in ALL {
        let v = vocab(family);
        let template_end = match family {
            Family::Llama3 => "<|eot_id|>",
            _ => "<|im_end|>",
        };
        // The template's end token, and the GGUF's own eos id (`<|custom_eos|>`).
        for stop in [template_end, "<|custom_eos|>"] {
            let (path, _) = write_model(dir.path(), family, Behaviour::AlwaysEmit(v.id(stop)), 3);
            let engine = load(&path);
            let r = engine
                .chat_with(conversation(), SamplingParams::greedy(20))
                .await
                .unwrap();
            assert_eq!(r.completion_tokens, 0, "{family:?} {stop}");
            assert_eq!(r.text, "");
            let r = engine
                .chat_with(conversation(), sampled(1, 20))
                .await
                .unwrap();
            assert_eq!(r.completion_tokens, 0, "{family:?} {stop} (sampling)");
        }
    }
}

#[tokio::test]
async fn template_and_tokenizer_come_from_the_gguf() {
    let dir = tempfile::tempdir().unwrap();
    for family in ALL {
        let (path, v) = write_model(dir.path(), family, Behaviour::Random, 4);
        let engine = load(&path);
        let expected = match family {
            Family::Llama3 => ChatTemplate::Llama3,
            Family::Qwen3 => ChatTemplate::ChatMlNoThink,
            _ => ChatTemplate::ChatMl,
        };
        assert_eq!(engine.template(), Some(expected), "{family:?}");
        let tok = engine.tokenizer().unwrap();
        let prompt = expected.render(&conversation());
        let ids = tok
            .encode(prompt.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(engine.count_tokens(&conversation()), ids.len());
        // Control tokens are single tokens.
        let first = match family {
            Family::Llama3 => "<|begin_of_text|>",
            _ => "<|im_start|>",
        };
        assert_eq!(ids[0], v.id(first), "{family:?}");
        let n_special = ids.iter().filter(|&&i| v.types[i as usize] == 3).count();
        // ChatML: 3 × <|im_start|> + 2 × <|im_end|>. Llama 3: bos + 3 headers × 2 + 2 × eot.
        let expected_special = if family == Family::Llama3 { 9 } else { 5 };
        assert_eq!(n_special, expected_special, "{family:?}: {ids:?}");
        // Merges apply: " the" is one token, " cap" too.
        let e = tok.encode(" the cap", false).unwrap();
        assert_eq!(e.get_tokens(), ["Ġthe", "Ġcap"], "{family:?}");
        // Round trip, including non-ASCII text and control tokens.
        let text = "¿Qué tal? 123 hello <|im_start|>x\n\n  y";
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{family:?}");
        let plain = "héllo wörld, 42!";
        let ids = tok.encode(plain, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, true).unwrap(), plain);
        // Control tokens are dropped when decoding a reply.
        let with_special = tok.encode(format!("hi{first}"), false).unwrap();
        assert_eq!(tok.decode(with_special.get_ids(), true).unwrap(), "hi");
    }
}

#[tokio::test]
async fn tokenizer_json_beside_the_file_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_model(dir.path(), Family::Qwen2, Behaviour::Random, 5);
    let from_gguf = load(&path);
    let tok = from_gguf.tokenizer().unwrap();
    // Save the GGUF-derived tokenizer plus one extra special token as tokenizer.json.
    let mut t2 = tok.clone();
    t2.add_special_tokens([tokenizers::AddedToken::from("<|extra|>", true)])
        .unwrap();
    t2.save(dir.path().join("tokenizer.json"), false).unwrap();
    let engine = load(&path);
    let t = engine.tokenizer().unwrap();
    assert!(t.token_to_id("<|extra|>").is_some());
    assert!(tok.token_to_id("<|extra|>").is_none());
    assert_eq!(
        t.encode("<|im_start|>user\nhello", false)
            .unwrap()
            .get_ids(),
        tok.encode("<|im_start|>user\nhello", false)
            .unwrap()
            .get_ids()
    );
}

#[tokio::test]
async fn load_failures_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    let err = ChatEngine::load_local(&missing, DeviceChoice::Cpu, SamplingParams::default(), 1)
        .unwrap_err();
    assert!(matches!(err, ChatError::Load { .. }));
    assert!(err.to_string().contains("nope.gguf"), "{err}");

    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not gguf").unwrap();
    let err = ChatEngine::load_local(&junk, DeviceChoice::Cpu, SamplingParams::default(), 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("junk.gguf") && err.contains("GGUF"), "{err}");

    // A GGUF of an unsupported architecture.
    let (path, _) = write_model(dir.path(), Family::Qwen2, Behaviour::Random, 6);
    let content = gguf_file::Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
    let mut md: HashMap<String, Value> = content.metadata.clone();
    md.insert("general.architecture".into(), Value::String("mamba".into()));
    md.insert("mamba.context_length".into(), Value::U32(64));
    let odd = dir.path().join("odd.gguf");
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(&odd).unwrap(), &md_refs, &[]).unwrap();
    let err = ChatEngine::load_local(&odd, DeviceChoice::Cpu, SamplingParams::default(), 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("odd.gguf") && err.contains("mamba"), "{err}");
}

#[tokio::test]
async fn overlong_prompts_are_refused_and_replies_fit_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_model(dir.path(), Family::Qwen2, Behaviour::AlwaysEmit(0), 7);
    let base = load(&path);
    let window = base.count_tokens(&conversation()) + 10;
    let engine = base.with_context_cap(window);
    let long = vec![ChatMessage::user("x ".repeat(100))];
    assert!(engine.count_tokens(&long) > window);
    let err = engine.chat(long).await.unwrap_err();
    assert!(
        matches!(err, ChatError::ContextOverflow { context_window, .. } if context_window == window),
        "{err}"
    );
    // A short prompt with a large max_new_tokens stops at the window.
    let r = engine
        .chat_with(conversation(), SamplingParams::greedy(1000))
        .await
        .unwrap();
    assert_eq!(r.prompt_tokens + r.completion_tokens, window);
}

#[tokio::test]
async fn clones_share_one_model() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<ChatEngine>();
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_model(dir.path(), Family::SmolLm, Behaviour::Random, 8);
    let engine = load(&path);
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let e = engine.clone();
            tokio::spawn(
                async move { e.chat_with(conversation(), SamplingParams::greedy(4)).await },
            )
        })
        .collect();
    let mut replies: Vec<ChatReply> = Vec::new();
    for h in handles {
        replies.push(h.await.unwrap().unwrap());
    }
    assert!(replies.windows(2).all(|w| w[0] == w[1]));
}
