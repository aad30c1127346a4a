//! Turns that wait: never "send it again", read receipts at once, one "got it" notice when the
//! answer takes a while, and no timeout for merely waiting behind other conversations.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sandra_actors::brain::{Brain, BrainFuture, TurnInput};
use sandra_actors::texts::{self, Lang};

use crate::support::*;

fn text_of(r: &fake_graph::Received) -> String {
    r.body["text"]["body"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A reply that is ready at once still marks the user's message read and shows the typing
/// indicator, for every message. (Read and typing used to come only from a refresh timer
/// raced against the turn, so a fast reply often left the message unread.)
#[tokio::test]
async fn a_fast_reply_still_marks_every_message_read() {
    let app = TestApp::spawn_with(
        |c| c.conversation.typing_indicator = true,
        Arc::new(EchoBrain::default()),
    )
    .await;
    let users: Vec<String> = (0..8).map(|i| format!("155500091{i:02}")).collect();
    for (i, u) in users.iter().enumerate() {
        app.post_signed(&text_webhook(&format!("wamid.fast{i}"), u, "hi", 0))
            .await;
    }
    assert_eq!(
        app.graph
            .wait_accepted(8, Duration::from_secs(10))
            .await
            .len(),
        8
    );
    let graph = &app.graph;
    assert!(
        eventually(Duration::from_secs(5), || graph.reads().len() >= 8).await,
        "{:?}",
        graph.reads()
    );
    let reads = app.graph.reads();
    for i in 0..8 {
        let wamid = format!("wamid.fast{i}");
        let r = reads
            .iter()
            .find(|r| r.body["message_id"] == wamid.as_str())
            .unwrap_or_else(|| panic!("{wamid} never marked read: {reads:?}"));
        assert_eq!(r.body["status"], "read");
        assert_eq!(r.body["typing_indicator"]["type"], "text");
    }
    assert_eq!(
        app.metric("wait_notices").await,
        0,
        "fast replies need none"
    );
    app.stop().await;
}

/// With the typing indicator off, the message is still marked read (without the indicator).
#[tokio::test]
async fn read_receipts_do_not_need_the_typing_indicator() {
    let app = TestApp::spawn().await;
    app.post_signed(&text_webhook("wamid.quiet", "15550009201", "hi", 0))
        .await;
    app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    let graph = &app.graph;
    assert!(eventually(Duration::from_secs(5), || !graph.reads().is_empty()).await);
    let reads = app.graph.reads();
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].body["message_id"], "wamid.quiet");
    assert!(reads[0].body.get("typing_indicator").is_none(), "{reads:?}");
    app.stop().await;
}

/// A reply that takes longer than `wait_notice_after` is preceded by exactly one short notice
/// in the user's language, then the answer.
#[tokio::test]
async fn a_slow_reply_is_preceded_by_one_notice_in_the_users_language() {
    let app = TestApp::spawn_with(
        |c| c.conversation.wait_notice_after = Duration::from_millis(200),
        Arc::new(EchoBrain::slow(Duration::from_millis(1500))),
    )
    .await;
    app.post_signed(&text_webhook(
        "wamid.es1",
        "15550009301",
        "Hola, ¿me puedes ayudar con una receta de cocina para esta noche?",
        0,
    ))
    .await;
    app.post_signed(&text_webhook(
        "wamid.en1",
        "15550009302",
        "Hello, could you help me plan a short trip to the mountains?",
        0,
    ))
    .await;
    let sent = app.graph.wait_accepted(4, Duration::from_secs(15)).await;
    assert_eq!(sent.len(), 4, "{sent:?}");
    for (user, lang) in [("15550009301", Lang::Es), ("15550009302", Lang::En)] {
        let theirs: Vec<String> = sent
            .iter()
            .filter(|r| r.body["to"] == user)
            .map(text_of)
            .collect();
        assert_eq!(theirs.len(), 2, "{theirs:?}");
        assert_eq!(theirs[0], texts::wait_notice(lang));
        assert!(theirs[1].starts_with("echo[0]: "), "{theirs:?}");
    }
    // Nothing more follows: one notice per turn.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.graph.accepted().len(), 4);
    assert_eq!(app.metric("wait_notices").await, 2);
    app.stop().await;
}

/// The notice is durable and exactly once: after a restart mid-turn, the replayed turn sends
/// no second notice, and the answer still comes.
#[tokio::test]
async fn a_replayed_turn_sends_no_second_notice() {
    let app = TestApp::spawn_with(
        |c| c.conversation.wait_notice_after = Duration::from_millis(100),
        Arc::new(EchoBrain::slow(Duration::from_secs(600))),
    )
    .await;
    app.post_signed(&text_webhook("wamid.replay", "15550009401", "hi there", 0))
        .await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(text_of(&sent[0]), texts::wait_notice(Lang::En));
    let (dir, graph) = app.stop().await;
    let app = TestApp::spawn_in(
        dir,
        graph,
        |c| c.conversation.wait_notice_after = Duration::from_millis(100),
        Arc::new(EchoBrain::slow(Duration::from_millis(800))),
    )
    .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(text_of(&sent[1]), "echo[0]: hi there");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.graph.accepted().len(), 2, "no second notice");
    app.stop().await;
}

/// A brain that answers one turn at a time, each taking `each`: a model serving a queue.
struct OneAtATime {
    gate: Arc<tokio::sync::Mutex<()>>,
    each: Duration,
    calls: Arc<AtomicUsize>,
}

impl Brain for OneAtATime {
    fn reply(&self, input: TurnInput) -> BrainFuture {
        let (gate, each, calls) = (self.gate.clone(), self.each, self.calls.clone());
        Box::pin(async move {
            let _turn = gate.lock().await;
            tokio::time::sleep(each).await;
            calls.fetch_add(1, Ordering::SeqCst);
            let said: Vec<String> = input.inputs.iter().map(|i| i.text.clone()).collect();
            Ok(format!("answer: {}", said.join(" | ")).into())
        })
    }
    fn describe(&self) -> String {
        "one at a time".into()
    }
}

/// Eight people writing at once to a model that answers one at a time: the last waits far
/// longer than `brain_timeout`, yet everyone gets an answer, since the model kept making
/// progress. Nobody gets an apology or is asked to send it again.
#[tokio::test]
async fn waiting_behind_other_conversations_is_not_a_timeout() {
    let calls = Arc::new(AtomicUsize::new(0));
    let brain = OneAtATime {
        gate: Arc::default(),
        each: Duration::from_millis(300),
        calls: calls.clone(),
    };
    let app = TestApp::spawn_with(
        |c| c.conversation.brain_timeout = Duration::from_millis(1200),
        Arc::new(brain),
    )
    .await;
    for i in 0..8 {
        app.post_signed(&text_webhook(
            &format!("wamid.q{i}"),
            &format!("155500095{i:02}"),
            &format!("question {i}"),
            0,
        ))
        .await;
    }
    let sent = app.graph.wait_accepted(8, Duration::from_secs(30)).await;
    assert_eq!(sent.len(), 8, "{sent:?}");
    for r in &sent {
        assert!(text_of(r).starts_with("answer: question "), "{:?}", r.body);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    assert_eq!(app.metric("turns_brain_errors").await, 0);
    app.stop().await;
}
