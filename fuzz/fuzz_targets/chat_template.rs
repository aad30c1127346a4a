//! Chat prompt rendering and tokenization on arbitrary conversations: `ChatTemplate::render`
//! then the tokenizer that `sandra_models::chat::tokenizer::from_gguf` builds from GGUF metadata,
//! for each supported family's tiny vocabulary (`sandra_models::testing`, the same metadata the
//! tests' tiny GGUF files carry; no model file is written).
//!
//! Properties:
//! - nothing panics and encoding never fails;
//! - decoding the ids gives back the prompt (exactly, or modulo NFC for the Qwen tokenizer, which
//!   normalizes): tokenization loses nothing;
//! - the prompt holds at least the special tokens the template itself emits, with every end of
//!   turn in place.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use candle_core::quantized::gguf_file::Value;
use libfuzzer_sys::fuzz_target;
use sandra_models::chat::{ChatMessage, ChatTemplate, Role, tokenizer};
use sandra_models::testing::{ALL, Family, vocab};
use tokenizers::{NormalizedString, Normalizer, Tokenizer};

#[derive(Arbitrary, Debug)]
struct Input {
    family: u8,
    messages: Vec<(u8, String)>,
}

struct Model {
    template: ChatTemplate,
    tok: Tokenizer,
}

/// The GGUF tokenizer metadata `testing::write_model` writes for `family`.
fn model(family: Family) -> Model {
    let v = vocab(family);
    let (arch, pre) = match family {
        Family::Qwen2 => ("qwen2", "qwen2"),
        Family::Qwen3 => ("qwen3", "qwen2"),
        Family::SmolLm => ("llama", "smollm"),
        Family::Llama3 => ("llama", "llama-bpe"),
    };
    let bos = match family {
        Family::Llama3 => v.id("<|begin_of_text|>"),
        _ => v.id("<|endoftext|>"),
    };
    let s = |x: &str| Value::String(x.to_string());
    let md: HashMap<String, Value> = [
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s(pre)),
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
        ("tokenizer.ggml.bos_token_id", Value::U32(bos)),
        (
            "tokenizer.ggml.eos_token_id",
            Value::U32(v.id("<|custom_eos|>")),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let tok = tokenizer::from_gguf(&md).expect("tiny vocabulary builds");
    let template = ChatTemplate::detect(arch, |t| tok.token_to_id(t).is_some());
    Model { template, tok }
}

/// `text` through the tokenizer's normalizer (NFC for Qwen), or as is. Both sides of the
/// round trip go through it: the tokenizer normalizes the text between control tokens, not
/// across them (`>` + U+0338 would compose to `≯` in the whole string), so only equality
/// modulo normalization is a property.
fn normalized(tok: &Tokenizer, text: &str) -> String {
    let mut n = NormalizedString::from(text);
    if let Some(norm) = tok.get_normalizer() {
        norm.normalize(&mut n).expect("normalizer");
    }
    n.get().to_string()
}

fn models() -> &'static [Model] {
    static MODELS: OnceLock<Vec<Model>> = OnceLock::new();
    MODELS.get_or_init(|| ALL.iter().map(|f| model(*f)).collect())
}

fuzz_target!(|input: Input| {
    let models = models();
    let m = &models[input.family as usize % models.len()];
    let messages: Vec<ChatMessage> = input
        .messages
        .into_iter()
        .take(16)
        .map(|(r, content)| {
            let role = [Role::System, Role::User, Role::Assistant][r as usize % 3];
            ChatMessage::new(role, content)
        })
        .collect();
    let prompt = m.template.render(&messages);
    let enc = m
        .tok
        .encode(prompt.as_str(), false)
        .expect("encoding never fails");
    let ids = enc.get_ids();

    let decoded = m
        .tok
        .decode(ids, false)
        .expect("decoding own ids never fails");
    assert_eq!(
        normalized(&m.tok, &decoded),
        normalized(&m.tok, &prompt),
        "tokenization is lossy"
    );

    let special = |t: &str| m.tok.token_to_id(t).expect("template token in vocab");
    let count = |id: u32| ids.iter().filter(|x| **x == id).count();
    let n = messages.len();
    match m.template {
        ChatTemplate::ChatMl | ChatTemplate::ChatMlNoThink => {
            assert!(count(special("<|im_start|>")) > n);
            assert!(count(special("<|im_end|>")) >= n);
        }
        ChatTemplate::Llama3 => {
            assert!(count(special("<|begin_of_text|>")) >= 1);
            assert!(count(special("<|start_header_id|>")) > n);
            assert!(count(special("<|end_header_id|>")) > n);
            assert!(count(special("<|eot_id|>")) >= n);
        }
    }
});
