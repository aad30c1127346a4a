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

pub(crate) fn voice_webhook(wamid: &str, from: &str, media_id: &str, sha256_b64: &str) -> Vec<u8> {
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

pub(crate) async fn app_with_tiny_whisper() -> (TestApp, Transcriber, tempfile::TempDir) {
    app_with_tiny_whisper_and(|_| {}).await
}

/// [`app_with_tiny_whisper`] with a config change.
async fn app_with_tiny_whisper_and(
    tweak: impl FnOnce(&mut sandra::config::Config),
) -> (TestApp, Transcriber, tempfile::TempDir) {
    let models = tempfile::tempdir().unwrap();
    sandra_models::testing_whisper::write_tiny_model(models.path(), 5);
    let opts = WhisperOptions {
        max_new_tokens: Some(8),
        ..Default::default()
    };
    let tr = Transcriber::load(models.path(), opts, 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let mut cfg = test_config(dir.path().join("data"), graph.url());
    tweak(&mut cfg);
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

/// One rotated access token reaches every Graph client: the sender, the media downloader, and a
/// sender re-created after a crash (which starts again from its original arguments).
#[tokio::test]
async fn rotated_token_is_used_by_sender_media_and_a_recreated_sender() {
    let (app, _tr, _models) = app_with_tiny_whisper().await;
    let rotated = "EAAG-rotated-token";
    app.graph.set_token(rotated);
    app.system
        .credentials
        .replace(sandra_actors::secret::SecretString::from(rotated));
    app.system
        .sender
        .get()
        .cast(sandra_actors::sender::SenderMsg::TokenReplaced)
        .unwrap();

    // The media client downloads with the new token (the fake logs hop 2 only with a valid
    // one); the bytes are junk, so the user is asked to resend, and that reply goes out too.
    app.graph
        .add_media("ROT1", "audio/ogg; codecs=opus", b"OggS junk".to_vec());
    let wrong = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"other"));
    app.post_signed(&voice_webhook("wamid.rot1", "15550003535", "ROT1", &wrong))
        .await;
    assert_eq!(
        app.graph
            .wait_accepted(1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    assert_eq!(app.graph.media_calls(), ["info:ROT1", "bytes:ROT1"]);

    // Crash the sender: its replacement, built from the original arguments, still sends with
    // the rotated token.
    let old = app.system.sender.get();
    old.kill();
    assert!(
        eventually(Duration::from_secs(5), || app
            .system
            .sender
            .try_get()
            .is_some_and(|s| s.get_id() != old.get_id()))
        .await
    );
    app.post_signed(&text_webhook("wamid.rot2", "15550003636", "hi", 0))
        .await;
    assert!(
        eventually(Duration::from_secs(10), || app
            .graph
            .accepted()
            .iter()
            .any(|s| s.body["to"] == "15550003636"))
        .await,
        "the re-created sender sent with the rotated token"
    );
    assert!(
        app.graph.sends().iter().all(|s| s.accepted),
        "no call used the old token"
    );
    app.stop().await;
}

/// The user turn that message `wamid` of the 1:1 chat with `user` left in the stored history,
/// once the turn is committed.
async fn stored_user_turn(app: &TestApp, user: &str, wamid: &str) -> sandra_actors::session::Turn {
    let key = sandra_actors::whatsapp::ConversationKey::new(
        PHONE_NUMBER_ID,
        &sandra_actors::whatsapp::ChatId::Phone(user.into()),
    );
    let store = &app.system.store;
    let find = || {
        store.load_session(&key).unwrap().and_then(|s| {
            s.history
                .into_iter()
                .find(|t| t.wamids == [wamid] && t.speaker == sandra_actors::session::Speaker::User)
        })
    };
    assert!(
        eventually(Duration::from_secs(5), || find().is_some()).await,
        "message {wamid} is not in history"
    );
    find().unwrap()
}

/// A voice note that could not be heard stays in history as a marker, never as an empty turn,
/// so the model later knows the user sent something it did not get.
#[tokio::test]
async fn an_unheard_voice_note_is_remembered_as_such() {
    let (app, _tr, _models) = app_with_tiny_whisper().await;
    let user = "15550003737";
    app.post_signed(&voice_webhook("wamid.unheard", user, "GONE", "x"))
        .await;
    assert_eq!(
        app.graph
            .wait_accepted(1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    let turn = stored_user_turn(&app, user, "wamid.unheard").await;
    assert_eq!(turn.text, sandra_actors::conversation::UNHEARD_VOICE_NOTE);
    app.stop().await;
}

/// A turn that times out after the voice note was transcribed keeps the transcript (or the
/// marker, if the tiny model heard nothing) in history: never an empty user turn.
#[tokio::test]
async fn a_timed_out_voice_turn_keeps_what_was_heard() {
    let Some(clip) = spoken_voice_note("Remember that I like tea.", "en") else {
        println!("skipped: espeak-ng/opusenc not installed (run scripts/install-test-deps.sh)");
        return;
    };
    let models = tempfile::tempdir().unwrap();
    sandra_models::testing_whisper::write_tiny_model(models.path(), 5);
    let opts = WhisperOptions {
        max_new_tokens: Some(8),
        ..Default::default()
    };
    let tr = Transcriber::load(models.path(), opts, 4).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let mut cfg = test_config(dir.path().join("data"), graph.url());
    cfg.conversation.brain_timeout = Duration::from_secs(3);
    let brain = Arc::new(EchoBrain::slow(Duration::from_secs(600)));
    let app = TestApp::from_app(
        Application::build_with(cfg, brain, Some(tr)).await.unwrap(),
        dir,
        graph,
    );
    app.graph
        .add_media("TIMEOUT1", "audio/ogg; codecs=opus", clip.clone());
    let sha = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&clip));
    let user = "15550003838";
    app.post_signed(&voice_webhook("wamid.late", user, "TIMEOUT1", &sha))
        .await;
    assert!(
        !app.graph
            .wait_accepted(1, Duration::from_secs(60))
            .await
            .is_empty()
    );
    let turn = stored_user_turn(&app, user, "wamid.late").await;
    assert!(!turn.text.trim().is_empty());
    app.stop().await;
}

/// The text of the one reply to a voice note whose media hop 1 describes with `lie`.
async fn reply_to_lying_media(id: &str, bytes: Vec<u8>, lie: MediaLie) -> (String, Vec<String>) {
    let (app, _tr, _models) = app_with_tiny_whisper().await;
    app.graph.add_media(id, "audio/ogg; codecs=opus", bytes);
    app.graph.lie_about_media(id, lie);
    let wamid = format!("wamid.{id}");
    assert_eq!(
        app.post_signed(&voice_webhook(&wamid, "15550004444", id, "x"))
            .await
            .status(),
        200
    );
    let sent = app.graph.wait_accepted(1, Duration::from_secs(10)).await;
    let text = sent[0].body["text"]["body"].as_str().unwrap().to_string();
    let calls = app.graph.media_calls();
    app.stop().await;
    (text, calls)
}

/// Hop 1 declares a file over the 16 MB audio limit: refused before a byte is downloaded.
#[tokio::test]
async fn media_declared_too_large_is_not_downloaded() {
    let lie = MediaLie {
        file_size: Some(17 * 1024 * 1024),
        ..Default::default()
    };
    let (text, calls) = reply_to_lying_media("BIGDECL", b"OggS".to_vec(), lie).await;
    assert!(text.contains("too long"), "{text}");
    assert_eq!(calls, ["info:BIGDECL"]);
}

/// Hop 1 declares a small file but hop 2 streams more than the limit: the download stops at the
/// limit (the bytes are never all held) and the user is told.
#[tokio::test]
async fn media_larger_than_declared_is_cut_off() {
    let lie = MediaLie {
        file_size: Some(1000),
        ..Default::default()
    };
    let (text, calls) = reply_to_lying_media("BIGREAL", vec![0u8; 17 * 1024 * 1024], lie).await;
    assert!(text.contains("too long"), "{text}");
    assert_eq!(calls, ["info:BIGREAL", "bytes:BIGREAL"]);
}

/// Hop 1 says the voice note is a JPEG: the type must match the message, nothing is downloaded.
#[tokio::test]
async fn media_of_the_wrong_type_is_refused() {
    let lie = MediaLie {
        mime_type: Some("image/jpeg".into()),
        ..Default::default()
    };
    let (text, calls) = reply_to_lying_media("JPEGVOICE", b"OggS".to_vec(), lie).await;
    assert!(text.contains("couldn't download"), "{text}");
    assert_eq!(calls, ["info:JPEGVOICE"]);
}

/// Hop 1 points the download at another origin over plain http: the bearer token is not sent
/// there (the other server sees no request at all) and the user is told.
#[tokio::test]
async fn media_url_on_another_origin_gets_no_token() {
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}/steal", other.local_addr().unwrap());
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((_sock, _)) = other.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let lie = MediaLie {
        url: Some(other_url),
        ..Default::default()
    };
    let (text, calls) = reply_to_lying_media("ELSEWHERE", b"OggS".to_vec(), lie).await;
    assert!(text.contains("couldn't download"), "{text}");
    assert_eq!(calls, ["info:ELSEWHERE"]);
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The transcription actor runs at most `transcription.max_jobs` voice notes at once: a note
/// over the cap waits for the slot (counted) and is then heard; nobody is asked to send it
/// again.
#[tokio::test]
async fn voice_notes_over_the_transcription_cap_wait_their_turn() {
    let (app, _tr, _models) = app_with_tiny_whisper_and(|c| c.transcription.max_jobs = 1).await;
    // The first note's download hangs in hop 1 for a while: its job holds the only slot.
    let not_audio = b"OggS not really".to_vec();
    let sha = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&not_audio));
    app.graph.add_media("SLOW", "audio/ogg", not_audio);
    app.graph.lie_about_media(
        "SLOW",
        MediaLie {
            delay: Some(Duration::from_secs(2)),
            ..Default::default()
        },
    );
    app.graph.add_media("SECOND", "audio/ogg", b"OggS".to_vec());
    app.post_signed(&voice_webhook("wamid.v1", "15550007001", "SLOW", &sha))
        .await;
    let graph = &app.graph;
    assert!(
        eventually(Duration::from_secs(5), || graph
            .media_calls()
            .contains(&"info:SLOW".to_string()))
        .await
    );
    app.post_signed(&voice_webhook("wamid.v2", "15550007002", "SECOND", "x"))
        .await;
    let metrics = &app;
    let mut waited = 0;
    for _ in 0..250 {
        waited = metrics.metric("transcriptions_busy").await;
        if waited == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(waited, 1, "the second note waits for the slot");
    // Both are answered, the note in progress first (hop 1 outlasts the Graph client's
    // timeout), then the one that waited: about itself, not "too many voice notes".
    let sent = app.graph.wait_accepted(2, Duration::from_secs(20)).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0].body["to"], "15550007001");
    let text = sent[0].body["text"]["body"].as_str().unwrap();
    assert!(text.contains("couldn't download your voice note"), "{text}");
    assert_eq!(sent[1].body["to"], "15550007002");
    let text = sent[1].body["text"]["body"].as_str().unwrap();
    assert!(!text.contains("too many"), "{text}");
    // The waiting note was downloaded only once the slot was free.
    let calls = app.graph.media_calls();
    let pos = |c: &str| calls.iter().position(|x| x == c);
    assert!(pos("info:SLOW") < pos("info:SECOND"), "{calls:?}");
    // Every job ends with its answer.
    let mut jobs = 1;
    for _ in 0..50 {
        jobs = app.metric("transcription_jobs").await;
        if jobs == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(jobs, 0);
    app.stop().await;
}

/// What the fake transcription server received.
#[derive(Default, Debug, Clone)]
pub(crate) struct HeardByServer {
    auth: Option<String>,
    fields: Vec<(String, String)>,
    file_name: Option<String>,
    file_type: Option<String>,
    file: Vec<u8>,
}

/// An OpenAI-compatible `/v1/audio/transcriptions` on loopback: checks the bearer key, reads
/// the multipart form with axum's own parser, and answers `{"text": ...}`.
pub(crate) async fn fake_transcription_server(
    key: &'static str,
) -> (String, Arc<std::sync::Mutex<Vec<HeardByServer>>>) {
    use axum::extract::{Multipart, State};
    use axum::http::{HeaderMap, StatusCode};
    type Seen = Arc<std::sync::Mutex<Vec<HeardByServer>>>;
    async fn transcribe(
        State((key, seen)): State<(&'static str, Seen)>,
        headers: HeaderMap,
        mut form: Multipart,
    ) -> (StatusCode, String) {
        let mut got = HeardByServer {
            auth: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            ..Default::default()
        };
        while let Ok(Some(field)) = form.next_field().await {
            let name = field.name().unwrap_or_default().to_string();
            if name == "file" {
                got.file_name = field.file_name().map(String::from);
                got.file_type = field.content_type().map(String::from);
                got.file = field.bytes().await.unwrap().to_vec();
            } else {
                let value = field.text().await.unwrap();
                got.fields.push((name, value));
            }
        }
        let authorised = got.auth.as_deref() == Some(&format!("Bearer {key}"));
        let first = {
            let mut seen = seen.lock().unwrap();
            seen.push(got);
            seen.len() == 1
        };
        if !authorised {
            return (
                StatusCode::UNAUTHORIZED,
                r#"{"error":{"message":"bad key"}}"#.into(),
            );
        }
        if first {
            // Full at first, as a pool of servers is at busy times.
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":{"code":503,"message":"no slot available"}}"#.into(),
            );
        }
        (
            StatusCode::OK,
            r#"{"text":" The server heard this note. ","language":"en"}"#.into(),
        )
    }
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/v1/audio/transcriptions", axum::routing::post(transcribe))
        .with_state((key, seen.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// `[transcription] backend = "openai"`: the voice note is decoded here and sent, as a WAV built
/// in memory, to the server's `/v1/audio/transcriptions` with the model, the language and the
/// bearer key; a server that is full at first (503) is asked again; what the server heard is
/// what the brain answers.
#[tokio::test]
async fn voice_notes_can_be_heard_by_a_remote_server() {
    let Some(clip) = spoken_voice_note("Hello Sandra, this goes to a server.", "en") else {
        println!("skipped: espeak-ng/opusenc not installed (run scripts/install-test-deps.sh)");
        return;
    };
    let (url, seen) = fake_transcription_server("sk-whisper-test").await;
    let app = TestApp::spawn_built(|c| {
        c.transcription.backend = sandra::config::TranscriptionBackend::Openai;
        c.transcription.base_url = format!("{url}/v1");
        c.transcription.model = "whisper-small".into();
        c.transcription.language = "en".into();
        c.transcription.api_key = "sk-whisper-test".to_string().into();
    })
    .await;
    app.graph
        .add_media("REMOTE1", "audio/ogg; codecs=opus", clip.clone());
    let sha = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&clip));
    app.post_signed(&voice_webhook(
        "wamid.remote1",
        "15550003535",
        "REMOTE1",
        &sha,
    ))
    .await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(30)).await;
    assert_eq!(sent.len(), 1);
    let reply = sent[0].body["text"]["body"].as_str().unwrap();
    assert!(reply.contains("The server heard this note."), "{reply}");
    let got = seen.lock().unwrap().clone();
    // The server was full the first time: the same note was sent again, not given up on.
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].file, got[1].file);
    let got = &got[1];
    assert_eq!(got.auth.as_deref(), Some("Bearer sk-whisper-test"));
    let field = |n: &str| {
        got.fields
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field("model"), Some("whisper-small"));
    assert_eq!(field("language"), Some("en"));
    assert_eq!(got.file_type.as_deref(), Some("audio/wav"));
    assert!(
        got.file_name
            .as_deref()
            .is_some_and(|n| n.ends_with(".wav"))
    );
    // The WAV holds the decoded note: 16 kHz mono 16-bit, as long as the clip.
    assert_eq!(&got.file[..4], b"RIFF");
    let pcm =
        sandra_models::audio::decode_to_pcm16k(&clip, "audio/ogg; codecs=opus", 900.0).unwrap();
    assert_eq!(got.file.len(), 44 + 2 * pcm.samples.len());
    app.stop().await;
}

/// A remote server that refuses the key: the error names the status and the URL (what an
/// operator needs), never the key; and no language is sent unless one is configured.
#[tokio::test]
async fn a_refusing_transcription_server_is_a_clear_failure() {
    let Some(clip) = spoken_voice_note("Hello again.", "en") else {
        println!("skipped: espeak-ng/opusenc not installed (run scripts/install-test-deps.sh)");
        return;
    };
    let (url, seen) = fake_transcription_server("sk-right").await;
    let tr = Transcriber::remote(sandra_models::whisper::remote::RemoteWhisperConfig {
        base_url: url,
        model: "whisper-small".into(),
        api_key: Some("sk-wrong-key".into()),
        language: None,
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let pcm =
        sandra_models::audio::decode_to_pcm16k(&clip, "audio/ogg; codecs=opus", 900.0).unwrap();
    let err = tr.transcribe(pcm.samples).await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    assert!(err.contains("/v1/audio/transcriptions"), "{err}");
    assert!(!err.contains("sk-wrong-key"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(
        seen.lock().unwrap()[0]
            .fields
            .iter()
            .find(|(k, _)| k == "language"),
        None,
        "no language unless configured"
    );
}
