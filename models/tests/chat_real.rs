//! Quality check with real weights, when installed: `$SANDRA_MODELS_DIR` or `<repo>/.models/`
//! holding a `*.gguf` chat model (see `scripts/fetch-models.sh`). Without one the test prints a
//! visible "skipped" line and passes.

use std::path::PathBuf;

use sandra_models::chat::{ChatEngine, ChatMessage, DeviceChoice, SamplingParams};

/// Installed GGUF chat models, smallest first.
fn installed_models() -> Vec<PathBuf> {
    let dir = std::env::var_os("SANDRA_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.models"));
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.len(), p)))
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
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
