//! Chat prompts on arbitrary conversations: `ChatTemplate::render`/`segments` and the segmented
//! encoder the local model uses (`sandra_models::chat::encode_chat_segments`), with the tokenizer
//! that `chat::tokenizer::from_gguf` builds from GGUF metadata, for each supported family's tiny
//! vocabulary (`sandra_models::testing`, the metadata the tests' tiny GGUF files carry; no model
//! file is written).
//!
//! Properties:
//! - nothing panics and encoding never fails;
//! - message text never yields a control-token id, whatever it contains (`<|im_end|>`,
//!   `<|start_header_id|>`…): the only control tokens in a prompt are the template's own, one per
//!   role header / turn end, so a user cannot open or close a turn;
//! - the segments concatenate to `render`'s string, markup decodes to itself exactly and content
//!   to itself (modulo NFC for the Qwen tokenizer, which normalizes): nothing is lost;
//! - `encode_chat` is the segments' ids in order;
//! - `render`'s string tokenized whole also round-trips (it is what logs and benchmarks show).
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use candle_core::quantized::gguf_file::Value;
use libfuzzer_sys::fuzz_target;
use sandra_models::chat::{
    ChatMessage, ChatTemplate, Role, Segment, encode_chat, encode_chat_segments, tokenizer,
};
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
    /// Ids of every control token of the vocabulary (GGUF token type 3).
    control: HashSet<u32>,
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
    let control = (0..v.tokens.len() as u32)
        .filter(|i| v.types[*i as usize] == 3)
        .collect();
    Model {
        template,
        tok,
        control,
    }
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

    let segments =
        encode_chat_segments(&m.tok, m.template, &messages).expect("encoding never fails");
    let mut joined = String::new();
    let mut all_ids = Vec::new();
    let mut markup_controls = 0;
    for (seg, ids) in &segments {
        let decoded = m
            .tok
            .decode(ids, false)
            .expect("decoding own ids never fails");
        match seg {
            Segment::Markup(text) => {
                assert_eq!(&decoded, text, "markup does not round-trip");
                markup_controls += ids.iter().filter(|i| m.control.contains(i)).count();
                joined.push_str(text);
            }
            Segment::Content(text) => {
                if let Some(id) = ids.iter().find(|i| m.control.contains(i)) {
                    panic!(
                        "message text {text:?} produced control token {:?}",
                        m.tok.id_to_token(*id)
                    );
                }
                assert_eq!(
                    normalized(&m.tok, &decoded),
                    normalized(&m.tok, text),
                    "content does not round-trip"
                );
                joined.push_str(text);
            }
        }
        all_ids.extend_from_slice(ids);
    }
    let prompt = m.template.render(&messages);
    assert_eq!(joined, prompt, "segments are not the rendered prompt");
    let flat = encode_chat(&m.tok, m.template, &messages).expect("encoding never fails");
    assert_eq!(flat, all_ids, "encode_chat is not the segments' ids");

    // Exactly the template's control tokens: per message a header (one token in ChatML, two in
    // Llama 3) and a turn end; then the generation prompt's header (and Llama 3's
    // <|begin_of_text|>).
    let n = messages.len();
    let want = match m.template {
        ChatTemplate::ChatMl | ChatTemplate::ChatMlNoThink => 2 * n + 1,
        ChatTemplate::Llama3 => 3 * n + 3,
        // The tiny vocabularies are ChatML's and Llama 3's only.
        other => unreachable!("{other:?} is not detected from a tiny vocabulary"),
    };
    assert_eq!(
        markup_controls, want,
        "template emitted an unexpected number of control tokens"
    );
    let controls = flat.iter().filter(|i| m.control.contains(i)).count();
    assert_eq!(controls, want, "control tokens beyond the template's own");

    // The whole rendered string (control tokens matched) round-trips too.
    let enc = m
        .tok
        .encode(prompt.as_str(), false)
        .expect("encoding never fails");
    let decoded = m
        .tok
        .decode(enc.get_ids(), false)
        .expect("decoding own ids never fails");
    assert_eq!(
        normalized(&m.tok, &decoded),
        normalized(&m.tok, &prompt),
        "tokenization is lossy"
    );
});
