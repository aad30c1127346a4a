//! The tokenizer of a GGUF chat model: `tokenizer.json` beside the file when there is one, else
//! built from the GGUF's own `tokenizer.ggml.*` metadata the way llama.cpp reads it.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is built from metadata: that is what
//! Qwen2/2.5/3, SmolLM2 and Llama 3 ship. The pre-tokenizer (how text is split before BPE) is
//! chosen by `tokenizer.ggml.pre`, mirroring llama.cpp's `llama-vocab.cpp`. Control and
//! user-defined tokens (`token_type` 3 and 4, e.g. `<|im_start|>`) become special added tokens, so
//! they are matched as single tokens in a prompt and dropped by `decode(.., true)`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, Model, NormalizedString, Normalizer, OffsetReferential, OffsetType,
    PreTokenizedString, PreTokenizer, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

/// GPT-2's split regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_GPT2` and the default).
const REGEX_GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Qwen2 (single digits).
const REGEX_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3 (digits in groups of up to three).
const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp token types.
const TOKEN_TYPE_CONTROL: u32 = 3;
const TOKEN_TYPE_USER_DEFINED: u32 = 4;

/// Loads `tokenizer.json` from `model_path`'s directory if present, else builds from metadata.
/// Returns the tokenizer and where it came from (for logs).
pub fn load(model_path: &Path, content: &Content) -> Result<(Tokenizer, &'static str), String> {
    if let Some(dir) = model_path.parent() {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let t = Tokenizer::from_file(&json)
                .map_err(|e| format!("reading {}: {e}", json.display()))?;
            return Ok((t, "tokenizer.json"));
        }
    }
    from_gguf(&content.metadata).map(|t| (t, "gguf metadata"))
}

/// Builds a byte-level BPE tokenizer from GGUF `tokenizer.ggml.*` metadata.
pub fn from_gguf(md: &HashMap<String, Value>) -> Result<Tokenizer, String> {
    let model = md_str(md, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(format!(
            "tokenizer model `{model}` cannot be built from GGUF metadata (only byte-level BPE, \
             `gpt2`, can); put the model's tokenizer.json next to the .gguf file"
        ));
    }
    let tokens = md_strings(md, "tokenizer.ggml.tokens")?;
    let merges = md_strings(md, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("malformed merge `{m}` in tokenizer.ggml.merges"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let types: Vec<u32> = match md.get("tokenizer.ggml.token_type") {
        Some(Value::Array(a)) => a.iter().map(|v| as_u32(v).unwrap_or(1)).collect(),
        _ => Vec::new(),
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| format!("building BPE from GGUF vocab: {e}"))?;
    let mut tok = Tokenizer::new(bpe);

    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("default");
    let (pre_tokenizer, nfc) = pre_tokenizer(pre)?;
    if nfc {
        tok.with_normalizer(Some(NFC))
            .map_err(|e| format!("normalizer: {e}"))?;
    }
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));

    // Control / user-defined tokens, plus the declared bos/eos/pad ids, are matched whole.
    let mut special: Vec<usize> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(**t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
        .map(|(i, _)| i)
        .collect();
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        if let Some(id) = md.get(key).and_then(|v| as_u32(v).ok()) {
            special.push(id as usize);
        }
    }
    special.sort_unstable();
    special.dedup();
    let added: Vec<AddedToken> = special
        .into_iter()
        .filter_map(|i| tokens.get(i))
        .map(|t| AddedToken::from(t.clone(), true))
        .collect();
    tok.add_special_tokens(added)
        .map_err(|e| format!("adding special tokens: {e}"))?;
    Ok(tok)
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value, and whether NFC normalisation applies.
fn pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool), String> {
    let split = |re: &str| -> Result<PreTokenizerWrapper, String> {
        Ok(Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| format!("pre-tokenizer regex: {e}"))?
        .into())
    };
    let bytes = || -> PreTokenizerWrapper { ByteLevel::new(false, false, false).into() };
    Ok(match pre {
        "qwen2" | "deepseek-r1-qwen" => (
            Sequence::new(vec![split(REGEX_QWEN2)?, bytes()]).into(),
            true,
        ),
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" | "falcon3" | "lfm2" => (
            Sequence::new(vec![split(REGEX_LLAMA3)?, bytes()]).into(),
            false,
        ),
        // llama.cpp groups these: single digits first, then GPT-2 splitting.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (
                Sequence::new(vec![Digits::new(true).into(), split(REGEX_GPT2)?, bytes()]).into(),
                false,
            )
        }
        _ => (
            Sequence::new(vec![split(REGEX_GPT2)?, bytes()]).into(),
            false,
        ),
    })
}

/// Tokenizes `text` as plain text: normalizer, pre-tokenizer and model only, so no added token
/// (control or not) is ever matched in it. `Tokenizer::set_encode_special_tokens(true)` is not
/// enough: it still matches added tokens that are not flagged special, such as Qwen3's `<think>`
/// in its tokenizer.json. For text without added-token strings the ids equal
/// `tok.encode(text, false)`'s.
pub fn encode_plain(tok: &Tokenizer, text: &str) -> tokenizers::Result<Vec<u32>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut normalized = NormalizedString::from(text);
    if let Some(n) = tok.get_normalizer() {
        n.normalize(&mut normalized)?;
    }
    let mut pre = PreTokenizedString::from(normalized);
    if let Some(p) = tok.get_pre_tokenizer() {
        p.pre_tokenize(&mut pre)?;
    }
    let model = tok.get_model();
    pre.tokenize(|piece| model.tokenize(piece.get()))?;
    Ok(pre
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .flat_map(|(_, _, tokens)| tokens.iter().flatten().map(|t| t.id))
        .collect())
}

/// Token id of each text in `texts` that is a single token of `tok`.
pub fn ids_of(tok: &Tokenizer, texts: &[&str]) -> Vec<u32> {
    texts.iter().filter_map(|t| tok.token_to_id(t)).collect()
}

fn md_str<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a str, String> {
    md.get(key)
        .ok_or_else(|| format!("GGUF metadata lacks `{key}`"))?
        .to_string()
        .map(String::as_str)
        .map_err(|e| format!("`{key}`: {e}"))
}

fn md_strings(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, String> {
    let arr = md
        .get(key)
        .ok_or_else(|| format!("GGUF metadata lacks `{key}`"))?
        .to_vec()
        .map_err(|e| format!("`{key}`: {e}"))?;
    arr.iter()
        .map(|v| v.to_string().cloned().map_err(|e| format!("`{key}`: {e}")))
        .collect()
}

/// A metadata integer of any width as u32.
pub(crate) fn as_u32(v: &Value) -> Result<u32, String> {
    Ok(match v {
        Value::U8(x) => *x as u32,
        Value::I8(x) => *x as u32,
        Value::U16(x) => *x as u32,
        Value::I16(x) => *x as u32,
        Value::U32(x) => *x,
        Value::I32(x) => *x as u32,
        Value::U64(x) => *x as u32,
        Value::I64(x) => *x as u32,
        other => return Err(format!("expected an integer, got {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splits(pre: &str, s: &str) -> Vec<String> {
        let (p, _) = pre_tokenizer(pre).unwrap();
        let mut pts = PreTokenizedString::from(s);
        p.pre_tokenize(&mut pts).unwrap();
        pts.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect()
    }

    #[test]
    fn digit_grouping_by_pre_type() {
        assert_eq!(splits("qwen2", "x 123"), ["x", "Ġ", "1", "2", "3"]);
        assert_eq!(splits("llama-bpe", "x 123"), ["x", "Ġ", "123"]);
        assert_eq!(splits("smollm", "x 123"), ["x", "Ġ", "1", "2", "3"]);
        assert_eq!(splits("gpt2", "x 123"), ["x", "Ġ123"]);
    }
}
