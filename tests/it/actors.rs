//! The actor tree: passivation, crash restart from stored state, poison messages, brain errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sandra_actors::ractor::call_t;
use sandra_actors::router::RouterMsg;

use crate::support::*;

const POISON_APOLOGY: &str =
    "Sorry, I couldn't process one of your messages. Please try sending it differently.";

async fn live(app: &TestApp) -> usize {
    call_t!(app.system.router.get(), RouterMsg::LiveCount, 1000).unwrap()
}

/// An idle conversation is stopped, the router survives it, and the next message restores the
/// session from sled (the brain sees the earlier turns).
#[tokio::test]
async fn idle_conversations_are_passivated_and_restored() {
    let app = TestApp::spawn_with(
        |c| c.conversation.idle_timeout = Duration::from_millis(300),
        Arc::new(EchoBrain::default()),
    )
    .await;
    let from = "15550006666";
    app.post_signed(&text_webhook("wamid.p1", from, "remember me", 1))
        .await;
    assert_eq!(
        app.graph
            .wait_accepted(1, Duration::from_secs(5))
            .await
            .len(),
        1
    );
    assert_eq!(live(&app).await, 1);
    let mut passivated = false;
    for _ in 0..100 {
        if live(&app).await == 0 && app.metric("conversations_passivated").await == 1 {
            passivated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(passivated, "conversation was not passivated");
    assert!(
        app.system.actors_up(),
        "the router must survive its child's exit"
    );

    app.post_signed(&text_webhook("wamid.p2", from, "still there?", 2))
        .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(5)).await;
    assert_eq!(sent[1].body["text"]["body"], "echo[2]: still there?");
    assert_eq!(app.metric("conversations_spawned").await, 2);
    app.stop().await;
}

/// Passivation asked while a turn is in progress is declined, and nothing is lost.
#[tokio::test]
async fn busy_conversation_declines_passivation() {
    let app = TestApp::spawn_with(
        |_| {},
        Arc::new(EchoBrain::slow(Duration::from_millis(500))),
    )
    .await;
    let from = "15550007777";
    app.post_signed(&text_webhook("wamid.b1", from, "one", 1))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let key = sandra_actors::whatsapp::ConversationKey::new(
        PHONE_NUMBER_ID,
        &sandra_actors::whatsapp::ChatId::Phone(from.into()),
    );
    app.system
        .router
        .get()
        .cast(RouterMsg::PassivateNow(key))
        .unwrap();
    // Arrives while the passivation request is pending: buffered by the router, then delivered.
    app.post_signed(&text_webhook("wamid.b2", from, "two", 2))
        .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(5)).await;
    let texts: Vec<_> = sent
        .iter()
        .map(|r| r.body["text"]["body"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, vec!["echo[0]: one", "echo[2]: two"]);
    assert_eq!(live(&app).await, 1);
    app.stop().await;
}

/// A conversation that panics is restarted from its stored state and still answers the message
/// it was handling, once.
#[tokio::test]
async fn crashed_conversation_restarts_without_losing_the_message() {
    let brain = Arc::new(PanickyBrain {
        panics_left: AtomicUsize::new(1),
    });
    let app = TestApp::spawn_with(|_| {}, brain.clone()).await;
    let from = "15550008888";
    app.post_signed(&text_webhook("wamid.c0", from, "before", 1))
        .await;
    app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    app.post_signed(&text_webhook("wamid.c1", from, "PANIC now", 2))
        .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.graph.accepted().len(), 2, "{sent:?}");
    assert_eq!(sent[1].body["text"]["body"], "ok: PANIC now");
    assert_eq!(app.metric("conversations_failed").await, 1);
    let session = app
        .system
        .store
        .load_session(&sandra_actors::whatsapp::ConversationKey::new(
            PHONE_NUMBER_ID,
            &sandra_actors::whatsapp::ChatId::Phone(from.into()),
        ))
        .unwrap()
        .unwrap();
    assert_eq!(session.history.len(), 4, "history survived the crash");
    app.stop().await;
}

/// A message that crashes its conversation every time is moved to dead-letter after three
/// tries; the conversation goes on answering other messages.
#[tokio::test]
async fn poison_message_is_dead_lettered() {
    let brain = Arc::new(PanickyBrain {
        panics_left: AtomicUsize::new(usize::MAX),
    });
    let app = TestApp::spawn_with(|_| {}, brain).await;
    let from = "15550001212";
    app.post_signed(&text_webhook("wamid.x1", from, "PANIC forever", 1))
        .await;
    assert!(
        eventually(Duration::from_secs(5), || app
            .system
            .metrics()
            .value("poison_messages")
            == Some(1.0))
        .await
    );
    assert_eq!(app.metric("dead_letters").await, 1);
    assert_eq!(app.metric("conversations_failed").await, 3);
    let sent = app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(sent[0].body["text"]["body"], POISON_APOLOGY);
    app.post_signed(&text_webhook("wamid.x2", from, "hello", 2))
        .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(5)).await;
    assert_eq!(sent[1].body["text"]["body"], "ok: hello");
    app.stop().await;
}

/// A brain error is a domain error: the user gets an apology and the actor lives on.
#[tokio::test]
async fn brain_errors_become_apologies() {
    let brain = Arc::new(PanickyBrain {
        panics_left: AtomicUsize::new(0),
    });
    let app = TestApp::spawn_with(|_| {}, brain).await;
    let from = "15550001313";
    app.post_signed(&text_webhook("wamid.e1", from, "FAIL please", 1))
        .await;
    app.post_signed(&text_webhook("wamid.e2", from, "fine now", 2))
        .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(5)).await;
    assert!(
        sent[0].body["text"]["body"]
            .as_str()
            .unwrap()
            .contains("Sorry")
    );
    assert_eq!(sent[1].body["text"]["body"], "ok: fine now");
    assert_eq!(app.metric("conversations_failed").await, 0);
    assert_eq!(app.metric("turns_brain_errors").await, 1);
    app.stop().await;
}

/// Puts `wamid` from `from` in the inbox of the data dir under `dir` with `attempts` attempts
/// already made, as a process killed during its turns would leave it.
async fn stored_with_attempts(dir: &std::path::Path, wamid: &str, from: &str, attempts: u32) {
    let store = sandra_actors::store::Store::open(&dir.join("data")).unwrap();
    let batch =
        sandra_actors::whatsapp::parse_webhook(&text_webhook(wamid, from, "OOM me", 1)).unwrap();
    let rec = store
        .accept(&batch, sandra_actors::store::now_ms())
        .unwrap()
        .new_messages
        .remove(0);
    for _ in 0..attempts {
        store
            .begin_attempt(&rec.key, &[rec.seq], u32::MAX, |_| unreachable!())
            .unwrap();
    }
    store.sync().await.unwrap();
    drop(store);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A message whose turns were tried three times (the process died each time) is not tried a
/// fourth: on start it is dead-lettered, the user gets exactly one apology, the brain never
/// sees it, and the conversation answers the next message normally.
#[tokio::test]
async fn message_that_used_up_its_attempts_is_dead_lettered_once_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let from = "15550004545";
    stored_with_attempts(dir.path(), "wamid.oom", from, 3).await;
    let brain = Arc::new(EchoBrain::default());
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let app = TestApp::spawn_in(dir, graph, |_| {}, brain.clone()).await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(sent[0].body["text"]["body"], POISON_APOLOGY);
    assert_eq!(sent[0].body["to"], from);
    assert_eq!(app.metric("poison_messages").await, 1);
    assert_eq!(app.metric("dead_letters").await, 1);
    assert_eq!(brain.calls.load(Ordering::SeqCst), 0);
    assert!(app.system.store.unfinished().unwrap().is_empty());

    app.post_signed(&text_webhook("wamid.after", from, "still there?", 2))
        .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(5)).await;
    assert_eq!(sent[1].body["text"]["body"], "echo[0]: still there?");
    assert_eq!(
        app.graph
            .accepted()
            .iter()
            .filter(|r| r.body["text"]["body"] == POISON_APOLOGY)
            .count(),
        1,
        "exactly one apology"
    );
    app.stop().await;
}

/// A message with attempts left is answered after a restart, and its crashes so far count.
#[tokio::test]
async fn message_with_attempts_left_is_answered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let from = "15550004646";
    stored_with_attempts(dir.path(), "wamid.retry", from, 2).await;
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let app = TestApp::spawn_in(dir, graph, |_| {}, Arc::new(EchoBrain::default())).await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(sent[0].body["text"]["body"], "echo[0]: OOM me");
    assert_eq!(app.metric("poison_messages").await, 0);
    app.stop().await;
}

/// An inbox record that is not readable (bad JSON written by a bug or a damaged disk) neither
/// stops the app from starting nor the replay of the other unanswered messages: it is
/// dead-lettered, and new messages are answered.
#[tokio::test]
async fn corrupt_inbox_record_is_dead_lettered_and_the_app_starts() {
    let dir = tempfile::tempdir().unwrap();
    let from = "15550004747";
    stored_with_attempts(dir.path(), "wamid.replayed", from, 0).await;
    {
        let db = sled::open(dir.path().join("data").join("sandra.sled")).unwrap();
        let inbox = db.open_tree("inbox").unwrap();
        let seq = db.generate_id().unwrap();
        inbox
            .insert(seq.to_be_bytes(), &b"{\"seq\": 7, \"key\": tru"[..])
            .unwrap();
        db.flush().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let app = TestApp::spawn_in(dir, graph, |_| {}, Arc::new(EchoBrain::default())).await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(sent[0].body["text"]["body"], "echo[0]: OOM me");
    assert_eq!(app.metric("dead_letters").await, 1);
    let dead = app.system.store.dead_letters().unwrap();
    assert!(dead[0].reason.contains("corrupt"), "{:?}", dead[0]);
    assert_eq!(dead[0].body, "{\"seq\": 7, \"key\": tru");
    app.post_signed(&text_webhook("wamid.new", "15550004848", "hi", 3))
        .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(5)).await;
    assert_eq!(sent[1].body["text"]["body"], "echo[0]: hi");
    app.stop().await;
}
