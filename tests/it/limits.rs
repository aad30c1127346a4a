//! Fair limits end to end: per-sender rates, allow/block lists, per-turn caps, and a brain that
//! times out being cancelled rather than left computing for nobody.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sandra_actors::brain::{Brain, BrainFuture, TurnInput};
use sandra_actors::session::SessionState;
use sandra_actors::texts::{Lang, rate_notice};
use sandra_actors::whatsapp::{ChatId, ConversationKey};

use crate::support::*;

fn session(app: &TestApp, from: &str) -> Option<SessionState> {
    let key = ConversationKey::new(PHONE_NUMBER_ID, &ChatId::Phone(from.into()));
    app.system.store.load_session(&key).unwrap()
}

fn history_text(app: &TestApp, from: &str) -> String {
    session(app, from)
        .map(|s| {
            s.history
                .iter()
                .map(|t| t.text.clone())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn bodies(app: &TestApp) -> Vec<String> {
    app.graph
        .accepted()
        .iter()
        .map(|r| r.body["text"]["body"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn inbox_drained(app: &TestApp) -> bool {
    eventually(Duration::from_secs(10), || {
        app.system.store.unfinished().unwrap().is_empty()
    })
    .await
}

/// Over the per-sender rate, the first extra message gets one polite notice and the rest are
/// dropped: answered by nobody, remembered nowhere, counted, and gone from the inbox.
#[tokio::test]
async fn a_sender_over_the_rate_gets_one_notice_and_the_rest_are_dropped() {
    let app = TestApp::spawn_with(
        |c| {
            c.limits.messages_per_minute = 1;
            c.limits.burst = 2;
        },
        Arc::new(EchoBrain::default()),
    )
    .await;
    let user = "15550007070";
    for i in 0..5 {
        let body = format!("message-{i}");
        app.post_signed(&text_webhook(&format!("wamid.rate{i}"), user, &body, i))
            .await;
    }
    assert!(inbox_drained(&app).await);
    assert_eq!(app.metric("messages_rate_limited").await, 3);
    // Another sender is not affected.
    app.post_signed(&text_webhook("wamid.other", "15550007171", "hello", 9))
        .await;
    assert!(
        eventually(Duration::from_secs(10), || bodies(&app)
            .iter()
            .any(|b| b.contains("hello")))
        .await
    );
    let sent = bodies(&app);
    assert_eq!(
        sent.iter().filter(|b| **b == rate_notice(Lang::En)).count(),
        1,
        "{sent:?}"
    );
    for dropped in ["message-2", "message-3", "message-4"] {
        assert!(!sent.iter().any(|b| b.contains(dropped)), "{sent:?}");
        assert!(!history_text(&app, user).contains(dropped));
    }
    let answered = sent.iter().filter(|b| b.starts_with("echo[")).cloned();
    let answered = answered.collect::<Vec<_>>().join("\n");
    assert!(answered.contains("message-0") && answered.contains("message-1"));
    app.stop().await;
}

/// Blocked numbers and numbers outside the allowlist get no answer and leave no history.
#[tokio::test]
async fn blocked_and_not_allowed_senders_get_nothing() {
    let app = TestApp::spawn_with(
        |c| {
            c.limits.allow = vec!["+1 555".into(), "+44".into()];
            c.limits.block = vec!["+44 7700 900".into()];
        },
        Arc::new(EchoBrain::default()),
    )
    .await;
    app.post_signed(&text_webhook("wamid.b1", "447700900123", "blocked-text", 0))
        .await;
    app.post_signed(&text_webhook("wamid.b2", "33611111111", "stranger-text", 1))
        .await;
    app.post_signed(&text_webhook("wamid.b3", "15550008080", "friend-text", 2))
        .await;
    assert_eq!(
        app.graph
            .wait_accepted(1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    assert!(inbox_drained(&app).await);
    assert_eq!(app.metric("messages_blocked").await, 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = app.graph.accepted();
    assert_eq!(sent.len(), 1, "only the allowed sender is answered");
    assert_eq!(sent[0].body["to"], "15550008080");
    assert!(history_text(&app, "447700900123").is_empty());
    assert!(history_text(&app, "33611111111").is_empty());
    assert!(history_text(&app, "15550008080").contains("friend-text"));
    app.stop().await;
}

/// A long message is cut (and the model told so); a pile of messages is answered a few at a
/// time, none lost.
#[tokio::test]
async fn long_messages_are_cut_and_big_batches_wait_for_the_next_turn() {
    let app = TestApp::spawn_with(
        |c| {
            c.limits.max_message_chars = 12;
            c.limits.max_batch_inputs = 2;
        },
        Arc::new(EchoBrain::slow(Duration::from_millis(400))),
    )
    .await;
    let user = "15550009090";
    app.post_signed(&text_webhook("wamid.c0", user, &"x".repeat(50), 0))
        .await;
    // These arrive while the first turn is with the brain, so they queue up together.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (i, t) in ["b", "c", "d"].iter().enumerate() {
        app.post_signed(&text_webhook(
            &format!("wamid.c{}", i + 1),
            user,
            t,
            i as i64 + 1,
        ))
        .await;
    }
    let sent = app.graph.wait_accepted(3, Duration::from_secs(15)).await;
    let sent: Vec<&str> = sent
        .iter()
        .map(|r| r.body["text"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(
        sent[0].starts_with(&format!(
            "echo[0]: {}\n[This message was too long",
            "x".repeat(12)
        )),
        "{}",
        sent[0]
    );
    assert!(!sent[0].contains(&"x".repeat(13)));
    assert!(sent[1].ends_with(": b | c"), "{}", sent[1]);
    assert!(sent[2].ends_with(": d"), "{}", sent[2]);
    assert!(inbox_drained(&app).await);
    app.stop().await;
}

/// A brain that works until it is dropped, recording that it was.
struct EndlessBrain {
    polls: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Brain for EndlessBrain {
    fn reply(&self, _input: TurnInput) -> BrainFuture {
        let polls = self.polls.clone();
        let guard = DropFlag(self.dropped.clone());
        Box::pin(async move {
            let _guard = guard;
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                polls.fetch_add(1, Ordering::SeqCst);
            }
        })
    }
    fn describe(&self) -> String {
        "endless".into()
    }
}

/// When the brain times out, the user gets the apology and the brain's work is cancelled: its
/// future is dropped and it stops running, instead of computing a reply nobody will read.
#[tokio::test]
async fn a_timed_out_brain_is_cancelled() {
    let polls = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let brain = EndlessBrain {
        polls: polls.clone(),
        dropped: dropped.clone(),
    };
    let app = TestApp::spawn_with(
        |c| c.conversation.brain_timeout = Duration::from_millis(300),
        Arc::new(brain),
    )
    .await;
    app.post_signed(&text_webhook("wamid.slow", "15550001212", "think hard", 0))
        .await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(10)).await;
    assert!(
        sent[0].body["text"]["body"]
            .as_str()
            .unwrap()
            .contains("something went wrong"),
        "{:?}",
        sent[0].body
    );
    assert!(
        eventually(Duration::from_secs(5), || dropped.load(Ordering::SeqCst)).await,
        "the brain's future was dropped"
    );
    let after = polls.load(Ordering::SeqCst);
    assert!(after > 0, "the brain did run");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(polls.load(Ordering::SeqCst), after, "and stopped running");
    app.stop().await;
}
