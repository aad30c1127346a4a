//! Outside the 24-hour window: a reply Meta refuses with 131047 (or that the sender knows the
//! closed window would refuse) is held; the configured reopen template goes out once per closed
//! window; held replies go out, in order, as soon as the user writes again.

use std::sync::Arc;
use std::time::Duration;

use sandra::config::ReopenTemplate;
use sandra_actors::brain::{Brain, BrainFuture, TurnInput};
use sandra_actors::store::OutboxState;

use crate::support::fake_graph::Received;
use crate::support::*;

fn window_closed() -> Fault {
    Fault::Error {
        http: 400,
        code: 131047,
        retry_after: None,
    }
}

fn is_template(r: &Received) -> bool {
    r.body["type"] == "template"
}

fn text_of(r: &Received) -> String {
    r.body["text"]["body"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Answers "long" with two paragraphs too long for one WhatsApp message (two replies), anything
/// else with an echo.
struct LongBrain;

impl Brain for LongBrain {
    fn reply(&self, input: TurnInput) -> BrainFuture {
        let said = input.inputs[0].text.clone();
        Box::pin(async move {
            Ok(if said.contains("long") {
                format!("{}\n\n{}", "first ".repeat(600), "second ".repeat(500))
            } else {
                format!("echo: {said}")
            }
            .into())
        })
    }
    fn describe(&self) -> String {
        "long".into()
    }
}

#[tokio::test]
async fn held_replies_get_one_reopen_template_and_go_out_when_the_user_writes_again() {
    let app = TestApp::spawn_with(
        |c| {
            c.whatsapp.reopen_template = ReopenTemplate {
                name: "sandra_reopen".into(),
                language: "en_US".into(),
            }
        },
        Arc::new(LongBrain),
    )
    .await;
    app.graph.approve_template("sandra_reopen", "en_US");
    app.graph.inject([window_closed()]);
    let from = "15550007070";
    // The answer is two messages, both caught by the closed window.
    app.post_signed(&text_webhook("wamid.h1", from, "something long", 0))
        .await;
    let store = app.system.store.clone();
    assert!(
        eventually(Duration::from_secs(10), || store
            .held_replies()
            .unwrap()
            .len()
            == 2
            && app.graph.accepted().iter().any(is_template))
        .await,
        "held: {:?}, sends: {:?}",
        store.held_replies().unwrap(),
        app.graph.sends()
    );
    let held = store.held_replies().unwrap();
    assert!(
        held.iter()
            .all(|h| h.recipient == format!("p:{from}") && h.template_queued)
    );
    // The template, once, as Meta expects it.
    let accepted = app.graph.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let t = &accepted[0].body;
    assert_eq!(t["to"], from);
    assert_eq!(t["template"]["name"], "sandra_reopen");
    assert_eq!(t["template"]["language"]["code"], "en_US");

    // The user writes again: the held replies go out first, in order, then the new answer.
    app.post_signed(&text_webhook("wamid.h2", from, "I'm back", 5))
        .await;
    let sent = app.graph.wait_accepted(4, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(text_of(&sent[1]).starts_with("first first"), "{sent:?}");
    assert!(text_of(&sent[2]).starts_with("second second"), "{sent:?}");
    assert!(text_of(&sent[3]).contains("I'm back"), "{sent:?}");
    assert!(store.held_replies().unwrap().is_empty());
    assert_eq!(
        app.graph.sends().iter().filter(|r| is_template(r)).count(),
        1
    );
    assert!(
        store
            .outbox_all()
            .unwrap()
            .iter()
            .all(|r| r.state == OutboxState::Sent)
    );
    app.stop().await;
}

#[tokio::test]
async fn without_a_template_a_held_reply_waits_for_the_user() {
    let app = TestApp::spawn().await;
    app.graph.inject([window_closed()]);
    let from = "15550008080";
    app.post_signed(&text_webhook("wamid.n1", from, "hello", 0))
        .await;
    let store = app.system.store.clone();
    assert!(
        eventually(Duration::from_secs(10), || store
            .held_replies()
            .unwrap()
            .len()
            == 1)
        .await
    );
    let held = &store.held_replies().unwrap()[0];
    assert!(!held.template_queued);
    assert!(held.reason.contains("131047"), "{held:?}");
    // Nothing was sent meanwhile: only the refused attempt.
    assert_eq!(app.graph.sends().len(), 1);
    assert!(app.graph.accepted().is_empty());

    app.post_signed(&text_webhook("wamid.n2", from, "still there?", 5))
        .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(text_of(&sent[0]).contains("hello"), "{sent:?}");
    assert!(text_of(&sent[1]).contains("still there?"), "{sent:?}");
    assert!(store.held_replies().unwrap().is_empty());
    app.stop().await;
}
