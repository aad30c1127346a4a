//! Voice notes end to end: webhook → two-hop media download from the fake Graph API (bearer
//! token on both hops) → in-memory Ogg/Opus decode → Whisper (a tiny random-weight model built
//! through candle and loaded by the real loader) → brain → reply. And the failure paths.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use sandra::app::Application;
use sandra_models::testing_whisper::spoken_voice_note;
use sandra_models::whisper::{Transcriber, WhisperOptions};
use sha2::{Digest, Sha256};

use crate::support::*;

fn voice_webhook(wamid: &str, from: &str, media_id: &str, sha256_b64: &str) -> Vec<u8> {
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Voice"}, "wa_id": from}],
            "messages": [{"from": from, "id": wamid, "timestamp": base_ts().to_string(), "type": "audio",
                "audio": {"mime_type": "audio/ogg; codecs=opus", "sha256": sha256_b64, "id": media_id, "voice": true}}]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

async fn app_with_tiny_whisper() -> (TestApp, Transcriber, tempfile::TempDir) {
    let models = tempfile::tempdir().unwrap();
    sandra_models::testing_whisper::write_tiny_model(models.path(), 5);
    let opts = WhisperOptions {
        max_new_tokens: Some(8),
        ..Default::default()
    };
    let tr = Transcriber::load(models.path(), opts, 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let cfg = test_config(dir.path().join("data"), graph.url());
    let app = Application::build_with(cfg, Arc::new(EchoBrain::default()), Some(tr.clone()))
        .await
        .unwrap();
    (TestApp::from_app(app, dir, graph), tr, models)
}

/// A voice note is downloaded (two hops, bearer token), decoded and transcribed in memory, and
/// answered as if the user had typed the transcript; the bytes are never written to disk.
#[tokio::test]
async fn voice_note_is_transcribed_and_answered() {
    let Some(clip) = spoken_voice_note("Hello Sandra, what is the weather like today?", "en")
    else {
        println!("skipped: espeak-ng/opusenc not installed (run scripts/install-test-deps.sh)");
        return;
    };
    let (app, tr, _models) = app_with_tiny_whisper().await;
    app.graph
        .add_media("MEDIA1", "audio/ogg; codecs=opus", clip.clone());
    let sha = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&clip));
    app.post_signed(&voice_webhook(
        "wamid.voice1",
        "15550003131",
        "MEDIA1",
        &sha,
    ))
    .await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(60)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(app.graph.media_calls(), ["info:MEDIA1", "bytes:MEDIA1"]);

    // What the same model hears in the same clip, computed directly.
    let pcm =
        sandra_models::audio::decode_to_pcm16k(&clip, "audio/ogg; codecs=opus", 900.0).unwrap();
    assert!(pcm.seconds > 1.0);
    let heard = tr
        .transcribe(pcm.samples)
        .await
        .unwrap()
        .text
        .trim()
        .to_string();
    let reply = sent[0].body["text"]["body"].as_str().unwrap();
    if heard.is_empty() {
        assert!(reply.contains("couldn't hear anything"), "{reply}");
    } else {
        assert_eq!(reply, format!("🎙️ _\"{heard}\"_\n\necho[0]: {heard}"));
    }

    // In memory only: no file under the data dir or the temp dir holds the audio.
    let needle = &clip[clip.len() / 2..clip.len() / 2 + 64];
    for root in [app.dir.path().to_path_buf(), std::env::temp_dir()] {
        for f in walk(&root) {
            if let Ok(bytes) = std::fs::read(&f) {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "audio bytes found in {}",
                    f.display()
                );
            }
        }
    }
    app.stop().await;
}

fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if e
            .metadata()
            .map(|m| m.len() < 64 * 1024 * 1024)
            .unwrap_or(false)
        {
            out.push(p);
        }
    }
    out
}

/// An expired media id (400, code 100) is not retried in a loop, and the user is told.
#[tokio::test]
async fn expired_media_is_reported_to_the_user() {
    let (app, _tr, _models) = app_with_tiny_whisper().await;
    app.post_signed(&voice_webhook("wamid.voice2", "15550003232", "GONE", "x"))
        .await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(10)).await;
    assert!(
        sent[0].body["text"]["body"]
            .as_str()
            .unwrap()
            .contains("couldn't download your voice note")
    );
    assert_eq!(app.graph.media_calls(), ["info:GONE"]);
    app.stop().await;
}

/// Media whose bytes do not match the declared sha256 is refused.
#[tokio::test]
async fn checksum_mismatch_is_refused() {
    let (app, _tr, _models) = app_with_tiny_whisper().await;
    app.graph.add_media(
        "MEDIA3",
        "audio/ogg; codecs=opus",
        b"OggS not really".to_vec(),
    );
    let wrong = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"something else"));
    app.post_signed(&voice_webhook(
        "wamid.voice3",
        "15550003333",
        "MEDIA3",
        &wrong,
    ))
    .await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(10)).await;
    assert!(
        sent[0].body["text"]["body"]
            .as_str()
            .unwrap()
            .contains("couldn't download")
    );
    app.stop().await;
}

/// With the real default models installed in `<repo>/.models` (`scripts/fetch-whisper.sh`,
/// `scripts/fetch-models.sh qwen`), a spoken question goes through Whisper base and the 1.5B chat
/// model and gets a sensible answer. Prints `skipped:` otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_models_answer_a_spoken_question() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(".models");
    let whisper = root.join("whisper-base");
    let chat = root.join("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
    if !whisper.join("model.safetensors").is_file() || !chat.is_file() {
        println!("skipped: real models not installed in {}", root.display());
        return;
    }
    let Some(clip) = spoken_voice_note("What is the capital of France?", "en") else {
        println!("skipped: espeak-ng/opusenc not installed (run scripts/install-test-deps.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let mut cfg = test_config(dir.path().join("data"), graph.url());
    cfg.llm.backend = sandra::config::LlmBackend::Local;
    cfg.llm.model = chat;
    cfg.llm.sampling = sandra_models::chat::SamplingParams::greedy(40).into();
    cfg.transcription.model_dir = whisper;
    let app = TestApp::from_app(Application::build(cfg).await.unwrap(), dir, graph);
    app.graph
        .add_media("REAL1", "audio/ogg; codecs=opus", clip.clone());
    let sha = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&clip));
    app.post_signed(&voice_webhook("wamid.real1", "15550003434", "REAL1", &sha))
        .await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(240)).await;
    let reply = sent[0].body["text"]["body"].as_str().unwrap().to_string();
    println!("reply to the spoken question: {reply}");
    assert!(
        reply.to_lowercase().contains("capital of france"),
        "transcript echoed: {reply}"
    );
    assert!(reply.contains("Paris"), "{reply}");
    app.stop().await;
}
