//! Quality check with real weights, when installed: `$SANDRA_MODELS_DIR` or `<repo>/.models/`
//! holding a `*.gguf` chat model (see `scripts/fetch-models.sh`). Without one the test prints a
//! visible "skipped" line and passes.

use std::path::PathBuf;

use sandra_models::chat::{ChatEngine, ChatMessage, DeviceChoice, SamplingParams};

/// Installed GGUF chat models, smallest first.
fn installed_models() -> Vec<PathBuf> {
    sandra_models::testing::installed_chat_models().1
}

#[tokio::test]
async fn real_model_knows_the_capital_of_france() {
    let models = installed_models();
    if models.is_empty() {
        println!(
            "skipped: no *.gguf chat model in $SANDRA_MODELS_DIR or .models/ \
             (run scripts/fetch-models.sh)"
        );
        return;
    }
    // The largest installed model answers best; SANDRA_TEST_MODEL picks one by file name.
    let path = match std::env::var("SANDRA_TEST_MODEL") {
        Ok(name) => models
            .iter()
            .find(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().contains(&name))
            })
            .cloned()
            .expect("SANDRA_TEST_MODEL matches no installed model"),
        Err(_) => models.last().unwrap().clone(),
    };
    let engine =
        ChatEngine::load_local(&path, DeviceChoice::Auto, SamplingParams::default(), 1).unwrap();
    println!("model: {}", engine.describe());
    let reply = engine
        .chat_with(
            vec![
                ChatMessage::system("You are a helpful assistant. Answer in one short sentence."),
                ChatMessage::user("What is the capital of France?"),
            ],
            SamplingParams::greedy(48),
        )
        .await
        .unwrap();
    println!(
        "reply: {:?} ({} tokens)",
        reply.text, reply.completion_tokens
    );
    assert!(reply.text.contains("Paris"), "{reply:?}");
    assert!(
        reply.completion_tokens < 48,
        "no end-of-turn token: {reply:?}"
    );
}

/// Prints, for each installed model, the token ids the GGUF-derived tokenizer gives a few tricky
/// strings, as JSON lines (`SANDRA_TOKENIZER_DUMP=1`), to compare with llama.cpp's tokenizer
/// (`scripts/bench-llm-llamacpp.py --compare-tokens FILE`).
#[test]
fn dump_tokenizer_ids_for_comparison() {
    if std::env::var_os("SANDRA_TOKENIZER_DUMP").is_none() {
        return;
    }
    for path in installed_models() {
        let md = sandra_models::chat::read_gguf_metadata(&path).unwrap();
        let tok = sandra_models::chat::tokenizer::from_gguf(&md).unwrap();
        for text in TRICKY {
            let ids = tok.encode(*text, false).unwrap().get_ids().to_vec();
            println!(
                "{}",
                serde_json::json!({"model": path.file_name().unwrap().to_string_lossy(),
                                   "text": text, "ids": ids})
            );
        }
    }
}

const TRICKY: &[&str] = &[
    "What is the capital of France?",
    "¿Qué tal? Estoy en la ciudad de México, año 2024: 12345 pesos.",
    "<|im_start|>user\nHello  world!\n\n\tTabs and   spaces <|im_end|>\n",
    "I'm here, you're there; they'll go. DON'T SHOUT",
    "emoji 😀👍🏽 and 中文字符 and Ελληνικά",
    "code: fn main() { println!(\"{}\", x[0] + 3.14e-2); }",
];
