//! Voice replies end to end: a voice note in → the transcription path (decoded in memory,
//! heard by a fake OpenAI-compatible server so the transcript is known) → the brain → the text
//! reply, then the reply spoken by the real Piper voice, uploaded to the fake Graph API
//! (`POST /{phone-number-id}/media`, multipart) and sent as an audio message. And the paths
//! where the upload fails: the text still goes out, exactly once.
//!
//! Needs the joe voice (`scripts/fetch-models.sh voice`, or `$SANDRA_MODELS_DIR/piper/`) and
//! espeak-ng/opusenc to make the incoming note; each test prints `skipped:` without them.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use sandra_actors::speech::{Outcome, SpeechMsg};
use sandra_actors::store::{OutboundBody, OutboxState};
use sandra_models::testing_whisper::spoken_voice_note;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::support::*;
use crate::voice::{fake_transcription_server, voice_webhook};

fn joe_voice() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("SANDRA_MODELS_DIR") {
        candidates.push(PathBuf::from(d).join("piper/en_US-joe-medium.onnx"));
    }
    candidates.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".models/piper/en_US-joe-medium.onnx"),
    );
    candidates
        .into_iter()
        .find(|p| p.is_file() && p.with_extension("onnx.json").is_file())
}

/// The app with the joe voice and a transcription server that hears "The server heard this
/// note." in English, and the voice note that user sends (already registered as media).
async fn app_with_voice(name: &str) -> Option<(TestApp, Vec<u8>)> {
    app_with_voice_and(name, |_| {}).await
}

async fn app_with_voice_and(
    name: &str,
    tweak: impl FnOnce(&mut sandra::config::Config),
) -> Option<(TestApp, Vec<u8>)> {
    let Some(voice) = joe_voice() else {
        println!("skipped: {name}: no Piper voice (run scripts/fetch-models.sh voice)");
        return None;
    };
    let Some(clip) = spoken_voice_note("What is the weather like today?", "en") else {
        println!("skipped: {name}: espeak-ng/opusenc not installed");
        return None;
    };
    let (url, _seen) = fake_transcription_server("sk-whisper-test").await;
    let app = TestApp::spawn_built(|c| {
        c.transcription.backend = sandra::config::TranscriptionBackend::Openai;
        c.transcription.base_url = format!("{url}/v1");
        c.transcription.model = "whisper-small".into();
        c.transcription.language = "en".into();
        c.transcription.api_key = "sk-whisper-test".to_string().into();
        c.transcription.echo_transcript = false;
        c.voice.voices = vec![voice];
        c.voice.threads = 2;
        tweak(c);
    })
    .await;
    app.graph
        .add_media("VOICE1", "audio/ogg; codecs=opus", clip.clone());
    Some((app, clip))
}

async fn send_voice_note(app: &TestApp, clip: &[u8]) {
    let sha = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(clip));
    app.post_signed(&voice_webhook(
        "wamid.spoken1",
        "15550004141",
        "VOICE1",
        &sha,
    ))
    .await;
}

/// Waits until no outbox record is pending any more (sent, failed or held).
async fn settled(app: &TestApp, within: Duration) -> Vec<sandra_actors::store::OutboxRecord> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let all = app.system.store.outbox_all().unwrap();
        let pending = all.iter().any(|r| r.state == OutboxState::Pending);
        if (!pending && !all.is_empty()) || std::time::Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn texts(app: &TestApp) -> Vec<String> {
    app.graph
        .accepted()
        .iter()
        .filter(|r| r.body["type"] == "text")
        .map(|r| r.body["text"]["body"].as_str().unwrap().to_string())
        .collect()
}

/// The whole way: the user speaks, Sandra answers in text at once and then with a voice note
/// of the same words, uploaded as Ogg/Opus (mono, 16 kHz, as WhatsApp's own notes) and sent
/// as an audio message naming the upload. The audio never touches the disk.
#[tokio::test(flavor = "multi_thread")]
async fn a_voice_note_is_answered_with_text_and_a_voice_note() {
    let Some((app, clip)) =
        app_with_voice("a_voice_note_is_answered_with_text_and_a_voice_note").await
    else {
        return;
    };
    send_voice_note(&app, &clip).await;
    // The placeholder brain's reply has several sentences: its first is a note of its own.
    let sent = app.graph.wait_accepted(3, Duration::from_secs(120)).await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[0].body["type"], "text");
    let reply = sent[0].body["text"]["body"].as_str().unwrap();
    assert!(reply.contains("The server heard this note."), "{reply}");
    let uploads = app.graph.uploads();
    assert_eq!(uploads.len(), 2);
    for (msg, up) in sent[1..].iter().zip(&uploads) {
        assert_eq!(msg.body["type"], "audio");
        assert_eq!(msg.body["to"], "15550004141");
        assert_eq!(msg.body["audio"]["id"], up.id.as_str());
        assert_eq!(up.kind, "audio/ogg");
        assert_eq!(up.content_type, "audio/ogg; codecs=opus");
        assert!(up.filename.ends_with(".ogg"), "{}", up.filename);
        // WhatsApp's voice-note shape: OpusHead version 1, mono, input rate 16 kHz.
        let head = &up.bytes[28..47];
        assert_eq!(&head[..8], b"OpusHead");
        assert_eq!(head[9], 1, "channels");
        assert_eq!(u32::from_le_bytes(head[12..16].try_into().unwrap()), 16_000);
        assert!(up.bytes.len() < 512 * 1024);
    }
    // Sandra's own decoder plays them back: "Hi Voice!" is short, the rest is longer speech.
    let seconds: Vec<f32> = uploads
        .iter()
        .map(|u| {
            sandra_models::audio::decode_to_pcm16k(&u.bytes, "audio/ogg; codecs=opus", 120.0)
                .unwrap()
                .seconds
        })
        .collect();
    assert!((0.3..3.0).contains(&seconds[0]), "{seconds:?}");
    assert!(seconds[1] > seconds[0] * 2.0, "{seconds:?}");
    let up = &uploads[1];

    let records = settled(&app, Duration::from_secs(10)).await;
    assert!(
        records.iter().all(|r| r.state == OutboxState::Sent),
        "{records:?}"
    );
    assert!(matches!(&records[1].body, OutboundBody::Voice { language, .. } if language == "en"));
    assert_eq!(app.metric("voice_notes_sent").await, 2);

    // In memory only: no file under the data dir or the temp dir holds the note.
    let needle = &up.bytes[up.bytes.len() / 2..up.bytes.len() / 2 + 64];
    for root in [app.dir.path().to_path_buf(), std::env::temp_dir()] {
        for f in walk(&root) {
            if let Ok(bytes) = std::fs::read(&f) {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "voice note bytes found in {}",
                    f.display()
                );
            }
        }
    }
    app.stop().await;
}

/// Meta refuses the upload for good (131053): the text has gone, once; no audio message is
/// sent; the voice record is failed, not retried.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upload_leaves_the_text_sent_once() {
    let Some((app, clip)) = app_with_voice("a_refused_upload_leaves_the_text_sent_once").await
    else {
        return;
    };
    let refused = Fault::Error {
        http: 400,
        code: 131053,
        retry_after: None,
    };
    app.graph.inject_upload([refused.clone(), refused]);
    send_voice_note(&app, &clip).await;
    let records = settled(&app, Duration::from_secs(120)).await;
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[0].state, OutboxState::Sent);
    for r in &records[1..] {
        assert!(
            matches!(
                r.state,
                OutboxState::Failed {
                    code: Some(131053),
                    ..
                }
            ),
            "{:?}",
            r.state
        );
        assert_eq!(r.attempts, 1);
    }
    assert_eq!(texts(&app).len(), 1);
    assert!(texts(&app)[0].contains("The server heard this note."));
    assert!(app.graph.sends().iter().all(|r| r.body["type"] != "audio"));
    assert!(app.graph.uploads().is_empty());
    assert_eq!(app.metric("voice_notes_failed").await, 2);
    app.stop().await;
}

/// A transient upload failure (a 500) is retried as one step (speak, upload, send): the voice
/// note arrives after all, and the text was still sent exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_upload_is_retried_and_the_text_is_not_repeated() {
    let Some((app, clip)) =
        app_with_voice("a_failed_upload_is_retried_and_the_text_is_not_repeated").await
    else {
        return;
    };
    app.graph.inject_upload([Fault::Error {
        http: 500,
        code: 1,
        retry_after: None,
    }]);
    send_voice_note(&app, &clip).await;
    let sent = app.graph.wait_accepted(3, Duration::from_secs(120)).await;
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[1].body["type"], "audio");
    assert_eq!(sent[2].body["type"], "audio");
    let records = settled(&app, Duration::from_secs(10)).await;
    assert!(
        records.iter().all(|r| r.state == OutboxState::Sent),
        "{records:?}"
    );
    assert_eq!(records[1].attempts, 2, "{:?}", records[1]);
    assert_eq!(records[2].attempts, 1, "{:?}", records[2]);
    assert_eq!(texts(&app).len(), 1);
    assert_eq!(app.graph.uploads().len(), 2);
    app.stop().await;
}

/// A speech actor that hands each job to the test, which answers when it chooses.
struct GatedSpeech;

impl sandra_actors::ractor::Actor for GatedSpeech {
    type Msg = SpeechMsg;
    type State = tokio::sync::mpsc::UnboundedSender<oneshot::Sender<Outcome>>;
    type Arguments = tokio::sync::mpsc::UnboundedSender<oneshot::Sender<Outcome>>;

    async fn pre_start(
        &self,
        _: sandra_actors::ractor::ActorRef<SpeechMsg>,
        jobs: Self::Arguments,
    ) -> Result<Self::State, sandra_actors::ractor::ActorProcessingErr> {
        Ok(jobs)
    }

    async fn handle(
        &self,
        _: sandra_actors::ractor::ActorRef<SpeechMsg>,
        msg: SpeechMsg,
        jobs: &mut Self::State,
    ) -> Result<(), sandra_actors::ractor::ActorProcessingErr> {
        if let SpeechMsg::Speak { reply, .. } = msg {
            let _ = jobs.send(reply);
        }
        Ok(())
    }
}

/// Speaking takes seconds; a voice note being spoken holds no Graph-call slot. At one call a
/// second, another user's reply goes out while the note is still being spoken (before, the
/// voice record took the only slot and held it until its note was spoken and uploaded).
#[tokio::test(flavor = "multi_thread")]
async fn another_users_reply_is_not_held_back_while_a_voice_note_is_spoken() {
    let Some((app, clip)) = app_with_voice_and(
        "another_users_reply_is_not_held_back_while_a_voice_note_is_spoken",
        |c| c.sender.rate_per_second = 1,
    )
    .await
    else {
        return;
    };
    let (jobs_tx, mut jobs) = tokio::sync::mpsc::unbounded_channel();
    let (gated, _) = sandra_actors::ractor::Actor::spawn(None, GatedSpeech, jobs_tx)
        .await
        .unwrap();
    app.system.speech.as_ref().unwrap().set(gated.clone());

    send_voice_note(&app, &clip).await;
    let first_job = tokio::time::timeout(Duration::from_secs(120), jobs.recv())
        .await
        .expect("the voice record is being spoken")
        .unwrap();

    // Another user's reply lands in the outbox while the note is being spoken.
    let other = "15550009999";
    let target = sandra_actors::whatsapp::ReplyTarget {
        phone: Some(other.into()),
        ..Default::default()
    };
    let key = sandra_actors::whatsapp::ConversationKey::new(
        PHONE_NUMBER_ID,
        &sandra_actors::whatsapp::ChatId::Phone(other.into()),
    );
    let mut session = sandra_actors::session::SessionState::new(key, target.clone());
    session.last_inbound_at = Some(base_ts() + 3000);
    let reply = sandra_actors::store::NewOutbound {
        target,
        body: OutboundBody::Text {
            body: "Your table is booked.".into(),
        },
        context_message_id: None,
        window_expires_at: session.window_expires_at(),
    };
    app.system
        .store
        .commit_turn(&session, &[], &[reply])
        .unwrap();
    app.system
        .sender
        .get()
        .cast(sandra_actors::sender::SenderMsg::Kick)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !texts(&app).iter().any(|t| t == "Your table is booked.") {
        assert!(
            std::time::Instant::now() < deadline,
            "the other user's reply waited for the voice note: {:?}",
            texts(&app)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        app.graph.uploads().is_empty(),
        "the note is still being spoken"
    );

    // Now the notes are spoken: each is uploaded and sent, after the text, once.
    let note = |ogg: &[u8]| {
        Ok(sandra_models::speech::VoiceNote {
            ogg: ogg.to_vec(),
            seconds: 2.0,
        })
    };
    let _ = first_job.send(note(&clip));
    let rest = clip.clone();
    let answer = tokio::spawn(async move {
        while let Some(job) = jobs.recv().await {
            let _ = job.send(note(&rest));
        }
    });
    let records = settled(&app, Duration::from_secs(60)).await;
    assert!(
        records.iter().all(|r| r.state == OutboxState::Sent),
        "{records:?}"
    );
    let audio: Vec<_> = app
        .graph
        .accepted()
        .into_iter()
        .filter(|r| r.body["type"] == "audio")
        .collect();
    assert_eq!(audio.len(), 2, "{audio:?}");
    assert_eq!(texts(&app).len(), 2, "{:?}", texts(&app));
    assert_eq!(app.graph.uploads()[0].bytes, clip);
    answer.abort();
    gated.stop(None);
    app.stop().await;
}

fn walk(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out
}
