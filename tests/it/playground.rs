//! The playground: the same conversation actors, memory and photo pipeline without WhatsApp,
//! through `Playground::say` and through the real `sandra chat` binary.

use std::process::Command;
use std::sync::{Arc, Mutex};

use sandra_actors::brain::{Brain, BrainFuture, TurnInput};
use sandra_actors::playground::{PlaygroundError, PlaygroundInput};
use sandra_models::testing_vision::{ocr_model_dir, render_png};

use crate::support::*;

/// Answers with everything it remembers, so a test can see memory at work.
#[derive(Default)]
struct MemoryBrain {
    inputs: Mutex<Vec<TurnInput>>,
}

impl Brain for MemoryBrain {
    fn reply(&self, input: TurnInput) -> BrainFuture {
        let remembered: Vec<String> = input.history.iter().map(|t| t.text.clone()).collect();
        let said: Vec<String> = input.inputs.iter().map(|i| i.text.clone()).collect();
        self.inputs.lock().unwrap().push(input);
        Box::pin(async move {
            Ok(format!(
                "remembered [{}]; heard [{}]",
                remembered.join(" / "),
                said.join(" / ")
            )
            .into())
        })
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

fn text(s: &str) -> PlaygroundInput {
    PlaygroundInput::Text(s.into())
}

#[tokio::test]
async fn a_local_chat_remembers_earlier_turns_and_never_reaches_meta() {
    let brain = Arc::new(MemoryBrain::default());
    let app = TestApp::spawn_with(|_| {}, brain.clone()).await;
    let pg = app.system.playground().clone();

    let first = pg
        .say("alice", text("my cat is called Miso"))
        .await
        .unwrap();
    assert_eq!(first, ["remembered []; heard [my cat is called Miso]"]);
    let second = pg
        .say("alice", text("what is my cat called?"))
        .await
        .unwrap();
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(second[0].contains("my cat is called Miso"), "{second:?}");
    assert!(
        second[0].contains("heard [what is my cat called?]"),
        "{second:?}"
    );

    // Another local chat has its own memory.
    let other = pg.say("bob", text("hi")).await.unwrap();
    assert_eq!(other, ["remembered []; heard [hi]"]);

    // Nothing went to the Graph API: no send, no read receipt, no typing indicator.
    assert!(app.graph.sends().is_empty(), "{:?}", app.graph.sends());
    assert!(app.graph.reads().is_empty());
    // The turns went through the durable path: nothing left in the inbox, every reply sent.
    let store = app.system.store.clone();
    assert!(store.unfinished().unwrap().is_empty());
    let out = store.outbox_all().unwrap();
    assert_eq!(out.len(), 3);
    assert!(
        out.iter()
            .all(|r| r.state == sandra_actors::store::OutboxState::Sent)
    );
    app.stop().await;
}

/// Meta refusing the token pauses WhatsApp sends, not the playground.
#[tokio::test]
async fn the_playground_answers_while_meta_refuses_the_token() {
    let app = TestApp::spawn_with(
        |c| c.whatsapp.access_token = sandra_actors::secret::SecretString::from("expired"),
        Arc::new(EchoBrain::default()),
    )
    .await;
    app.post_signed(&text_webhook("wamid.p1", "15550009090", "hi", 0))
        .await;
    let system = app.system.clone();
    assert!(
        eventually(std::time::Duration::from_secs(10), || system
            .token_invalid())
        .await
    );
    let replies = app
        .system
        .playground()
        .say("console", text("still there?"))
        .await
        .unwrap();
    assert_eq!(replies, ["echo[0]: still there?"]);
    app.stop().await;
}

#[tokio::test]
async fn bad_chat_names_and_empty_messages_are_refused() {
    let app = TestApp::spawn().await;
    let pg = app.system.playground().clone();
    for bad in ["", "a/b", "with space", &"x".repeat(65)] {
        assert!(
            matches!(pg.say(bad, text("hi")).await, Err(PlaygroundError::BadChat)),
            "{bad:?}"
        );
    }
    assert!(matches!(
        pg.say("ok", text("   ")).await,
        Err(PlaygroundError::Empty)
    ));
    assert!(app.system.store.outbox_all().unwrap().is_empty());
    app.stop().await;
}

/// A captioned photo goes through the real OCR model, from memory (no Graph media hops).
#[tokio::test]
async fn a_captioned_photo_is_read_by_ocr_without_the_graph_api() {
    let ocr = ocr_model_dir();
    assert!(
        ocr.is_dir(),
        "the OCR model is not installed at {}",
        ocr.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("data/models");
    std::fs::create_dir_all(&models).unwrap();
    std::os::unix::fs::symlink(&ocr, models.join(sandra_models::catalog::PPOCR_V6_SMALL)).unwrap();
    let brain = Arc::new(MemoryBrain::default());
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let app = TestApp::spawn_in(dir, graph, |_| {}, brain.clone()).await;
    let png = render_png(&[
        "-size",
        "900x160",
        "xc:white",
        "-font",
        "DejaVu-Sans",
        "-pointsize",
        "44",
        "-fill",
        "black",
        "-annotate",
        "+40+100",
        "Total: $4,321.09",
    ])
    .expect("ImageMagick is needed (scripts/install-test-deps.sh)");
    let replies = app
        .system
        .playground()
        .say(
            "photos",
            PlaygroundInput::Image {
                bytes: png,
                mime: "image/png".into(),
                caption: Some("How much is it?".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(replies.len(), 1, "{replies:?}");
    let seen = brain.inputs.lock().unwrap()[0].inputs[0].text.clone();
    assert!(seen.contains("$4,321.09"), "{seen}");
    assert!(seen.contains("How much is it?"), "{seen}");
    assert!(app.graph.media_calls().is_empty());
    app.stop().await;
}

/// The real binary: `sandra chat` on a fresh data directory (no model, no WhatsApp settings)
/// answers each line through the placeholder brain and leaves on `/quit`.
#[tokio::test]
async fn sandra_chat_talks_in_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandra"));
    cmd.arg("chat")
        .env("SANDRA_DATA_DIR", dir.path().join("data"))
        .env_remove("WHATSAPP_ACCESS_TOKEN")
        .env_remove("WHATSAPP_PHONE_NUMBER_ID")
        .env("RUST_LOG", "warn");
    let out = tokio::task::spawn_blocking(move || {
        crate::support::run_with_stdin(cmd, b"hello there\nand again\n/quit\nnever read\n")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<&str> = stdout
        .split("you> ")
        .filter_map(|s| s.trim().strip_prefix("sandra> "))
        .collect();
    assert_eq!(replies.len(), 2, "{stdout}");
    assert!(replies[0].contains("“hello there”"), "{stdout}");
    assert!(replies[1].contains("“and again”"), "{stdout}");
    assert!(!stdout.contains("never read"), "{stdout}");
}

/// A voice note is heard by the transcription actor from memory (no Graph media hops) and
/// answered like a WhatsApp one.
#[tokio::test]
async fn a_voice_note_is_transcribed_without_the_graph_api() {
    let Some(clip) = sandra_models::testing_whisper::spoken_voice_note("Hello Sandra", "en") else {
        println!("skipped: espeak-ng/opusenc not installed (run scripts/install-test-deps.sh)");
        return;
    };
    let (app, tr, _models) = crate::voice::app_with_tiny_whisper().await;
    let replies = app
        .system
        .playground()
        .say(
            "voice",
            PlaygroundInput::Voice {
                bytes: clip.clone(),
                mime: "audio/ogg; codecs=opus".into(),
            },
        )
        .await
        .unwrap();
    // What the same model hears in the same clip, computed directly.
    let pcm =
        sandra_models::audio::decode_to_pcm16k(&clip, "audio/ogg; codecs=opus", 900.0).unwrap();
    let heard = tr
        .transcribe(pcm.samples)
        .await
        .unwrap()
        .text
        .trim()
        .to_string();
    assert_eq!(replies.len(), 1, "{replies:?}");
    if heard.is_empty() {
        assert!(replies[0].contains("couldn't hear anything"), "{replies:?}");
    } else {
        assert_eq!(replies[0], format!("🎙️ _\"{heard}\"_\n\necho[0]: {heard}"));
    }
    assert!(app.graph.media_calls().is_empty());
    app.stop().await;
}
