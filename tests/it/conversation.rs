//! Conversations end to end: webhook in → conversation actor → outbox → fake Graph API.

use std::sync::Arc;
use std::time::Duration;

use sandra_actors::store::OutboxState;
use sandra_actors::whatsapp::DeliveryStatus;

use crate::support::*;

fn text_of(r: &fake_graph::Received) -> String {
    r.body["text"]["body"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A text message gets one reply, to the sender, in Meta's send format, with history kept.
#[tokio::test]
async fn text_gets_a_reply_and_history_is_kept() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.post_signed(&fresh_fixture("text.json", 0))
            .await
            .status(),
        200
    );
    let sent = app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 1);
    let b = &sent[0].body;
    assert_eq!(b["messaging_product"], "whatsapp");
    assert_eq!(b["recipient_type"], "individual");
    assert_eq!(b["to"], "16505551234");
    assert_eq!(b["type"], "text");
    assert_eq!(text_of(&sent[0]), "echo[0]: Does it come in another color?");
    assert!(
        b["biz_opaque_callback_data"]
            .as_str()
            .unwrap()
            .starts_with("sandra:")
    );

    app.post_signed(&text_webhook(
        "wamid.second",
        "16505551234",
        "And in blue?",
        10,
    ))
    .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(5)).await;
    assert_eq!(
        text_of(&sent[1]),
        "echo[2]: And in blue?",
        "the brain sees the earlier turn"
    );
    app.stop().await;
}

/// `/reset` forgets the conversation; `/help` and unknown commands answer with help.
#[tokio::test]
async fn commands() {
    let app = TestApp::spawn().await;
    let from = "15550009999";
    for (i, body) in ["hello", "/reset", "after reset", "/help", "/frobnicate"]
        .iter()
        .enumerate()
    {
        app.post_signed(&text_webhook(
            &format!("wamid.cmd{i}"),
            from,
            body,
            i as i64,
        ))
        .await;
        app.graph.wait_accepted(i + 1, Duration::from_secs(5)).await;
    }
    let texts: Vec<String> = app.graph.accepted().iter().map(text_of).collect();
    assert_eq!(texts[0], "echo[0]: hello");
    assert!(texts[1].contains("forgotten"), "{}", texts[1]);
    assert_eq!(texts[2], "echo[0]: after reset");
    assert!(texts[3].contains("/reset") && texts[3].contains("/help"));
    assert!(texts[4].contains("/frobnicate") && texts[4].contains("/help"));
    app.stop().await;
}

/// Reactions are recorded without a reply; unsupported types get an honest answer.
#[tokio::test]
async fn reactions_are_quiet_and_unsupported_types_are_answered() {
    let app = TestApp::spawn().await;
    app.post_signed(&fresh_fixture("reaction.json", 0)).await;
    app.post_signed(&fresh_fixture("unsupported.json", 1)).await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_all = app.graph.accepted();
    assert_eq!(sent_all.len(), 1, "{sent:?}");
    assert!(text_of(&sent_all[0]).contains("can't read this kind of message (poll_update)"));
    app.stop().await;
}

/// In a group Sandra answers only when addressed, and replies to the group, quoting.
#[tokio::test]
async fn groups_answer_only_when_addressed() {
    let app = TestApp::spawn().await;
    app.post_signed(&fresh_fixture("group_text.json", 0)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(app.graph.accepted().is_empty(), "not addressed: no reply");

    let body = String::from_utf8(fresh_fixture("group_text.json", 5))
        .unwrap()
        .replace(
            "What do you all think about this?",
            "Sandra, what do you think?",
        )
        .replace(
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
            "wamid.group2",
        );
    app.post_signed(body.as_bytes()).await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 1);
    let b = &sent[0].body;
    assert_eq!(b["recipient_type"], "group");
    assert_eq!(
        b["to"],
        "Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD"
    );
    assert_eq!(b["context"]["message_id"], "wamid.group2");
    // The unaddressed message is in the history the brain sees, as context.
    // Addressed to the asker by name (groups: see tests/it/groups.rs).
    assert_eq!(
        text_of(&sent[0]),
        "@Sheena Nelson echo[1]: Sandra, what do you think?"
    );
    let key = sandra_actors::whatsapp::ConversationKey::new(
        PHONE_NUMBER_ID,
        &sandra_actors::whatsapp::ChatId::Group(
            "Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD".into(),
        ),
    );
    let s = app.system.store.load_session(&key).unwrap().unwrap();
    assert_eq!(
        s.history[0].text,
        "Sheena Nelson: What do you all think about this?"
    );
    app.stop().await;
}

/// Messages that arrive while Sandra is answering are answered together, in timestamp order,
/// with the reply quoting the latest.
#[tokio::test]
async fn messages_during_a_turn_are_answered_together_in_order() {
    let brain = Arc::new(EchoBrain::slow(Duration::from_millis(600)));
    let app = TestApp::spawn_with(|_| {}, brain.clone()).await;
    let from = "15550004444";
    app.post_signed(&text_webhook("wamid.t0", from, "first", 100))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Delivered out of order: the later message first.
    app.post_signed(&text_webhook("wamid.t2", from, "third", 300))
        .await;
    app.post_signed(&text_webhook("wamid.t1", from, "second", 200))
        .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(text_of(&sent[0]), "echo[0]: first");
    assert_eq!(text_of(&sent[1]), "echo[2]: second | third");
    assert_eq!(sent[1].body["context"]["message_id"], "wamid.t2");
    assert_eq!(brain.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    app.stop().await;
}

/// Status webhooks move the outbox record forward only; duplicates are ignored.
#[tokio::test]
async fn statuses_only_move_forward() {
    let app = TestApp::spawn().await;
    let to = "15550005555";
    app.post_signed(&text_webhook("wamid.s1", to, "hi", 0))
        .await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 1);
    let store = app.system.store.clone();
    let rec_wamid = || store.outbox_all().unwrap().into_iter().next().unwrap();
    assert!(eventually(Duration::from_secs(3), || rec_wamid().wamid.is_some()).await);
    let wamid = rec_wamid().wamid.unwrap();
    for st in ["read", "delivered", "sent", "read"] {
        assert_eq!(
            app.post_signed(&status_webhook(&wamid, st, to, None))
                .await
                .status(),
            200
        );
    }
    let rec = rec_wamid();
    assert_eq!(rec.status, Some(DeliveryStatus::Read));
    assert_eq!(rec.state, OutboxState::Sent);
    assert_eq!(app.metric("statuses_duplicate").await, 1);
    app.stop().await;
}

/// The shared status fixtures (sent, failed 131047) are accepted even though Sandra never sent
/// those messages: they are counted as unmatched, not errors.
#[tokio::test]
async fn foreign_statuses_are_counted_not_rejected() {
    let app = TestApp::spawn().await;
    for f in [
        "status_sent.json",
        "status_failed_131047.json",
        "multi_message_batch.json",
    ] {
        assert_eq!(app.post_signed(&fixture(f)).await.status(), 200, "{f}");
    }
    assert!(app.metric("statuses_unmatched").await >= 2);
    app.stop().await;
}

/// While the brain works, the user's message is marked read with the typing indicator.
#[tokio::test]
async fn typing_indicator_while_thinking() {
    let app = TestApp::spawn_with(
        |c| c.conversation.typing_indicator = true,
        Arc::new(EchoBrain::slow(Duration::from_millis(300))),
    )
    .await;
    app.post_signed(&text_webhook(
        "wamid.typing1",
        "15550001414",
        "think hard",
        0,
    ))
    .await;
    app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    let reads = app.graph.reads();
    assert_eq!(reads.len(), 1);
    let b = &reads[0].body;
    assert_eq!(b["status"], "read");
    assert_eq!(b["message_id"], "wamid.typing1");
    assert_eq!(b["typing_indicator"]["type"], "text");
    assert!(
        reads[0].at < app.graph.accepted()[0].at,
        "typing shown before the reply"
    );
    app.stop().await;
}

/// A tapped list row reaches the brain with its title, its description and the question it
/// answers (Sandra's own message, found by the wamid Meta gave it), not as a bare "Lisboa".
#[tokio::test]
async fn a_list_reply_reaches_the_brain_with_the_question_it_answers() {
    let app = TestApp::spawn().await;
    let from = "15550004321";
    app.post_signed(&text_webhook(
        "wamid.ask",
        from,
        "Which city should I visit?",
        0,
    ))
    .await;
    app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    // The wamid Meta gave Sandra's reply, once the sender has recorded it.
    let mut sent_wamid = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            sent_wamid = app
                .system
                .store
                .outbox_all()
                .unwrap()
                .into_iter()
                .find_map(|r| r.wamid);
            sent_wamid.is_some()
        })
        .await
    );
    let mut tap: serde_json::Value =
        serde_json::from_slice(&text_webhook("wamid.tap", from, "", 1)).unwrap();
    let m = &mut tap["entry"][0]["changes"][0]["value"]["messages"][0];
    m["type"] = "interactive".into();
    m.as_object_mut().unwrap().remove("text");
    m["context"] = serde_json::json!({"from": "15550783881", "id": sent_wamid.unwrap()});
    m["interactive"] = serde_json::json!({"type": "list_reply", "list_reply": {
        "id": "city_lis", "title": "Lisboa", "description": "Capital of Portugal"}});
    assert_eq!(
        app.post_signed(tap.to_string().as_bytes()).await.status(),
        200
    );
    let sent = app.graph.wait_accepted(2, Duration::from_secs(5)).await;
    assert_eq!(
        text_of(&sent[1]),
        "echo[2]: [I tapped \"Lisboa\" (Capital of Portugal) in reply to your message: \
         \"echo[0]: Which city should I visit?\"]"
    );
    app.stop().await;
}
