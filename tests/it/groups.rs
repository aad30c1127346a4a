//! Groups end to end, from webhooks: when Sandra answers (named, `@number`, a reply to her own
//! message; near-miss names stay chatter), what the brain is given (earlier chatter, who joined
//! and left), where the reply goes (the group, quoting and naming the asker), and how a group
//! ends (Sandra removed, group deleted: the conversation closes and nothing more is sent).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandra_actors::brain::{Brain, BrainFuture, TurnInput};
use sandra_actors::ractor::call_t;
use sandra_actors::router::RouterMsg;
use sandra_actors::store::OutboxState;
use sandra_actors::whatsapp::{ChatId, ConversationKey};
use serde_json::{Value, json};

use crate::support::*;

/// The group of `group_text.json` and of the `group_*` fixtures.
const GROUP: &str = "Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD";
/// The business number in every test webhook's metadata.
const OUR_NUMBER: &str = "15550783881";

fn group_key() -> ConversationKey {
    ConversationKey::new(PHONE_NUMBER_ID, &ChatId::Group(GROUP.into()))
}

/// A group text message as Meta sends it (`group_text.json`'s shape); `ts` is an offset from
/// [`base_ts`], `context` the quoted message if any.
fn group_text(
    wamid: &str,
    from: &str,
    name: &str,
    body: &str,
    ts: i64,
    context: Option<Value>,
) -> Vec<u8> {
    let mut m = json!({"from": from, "group_id": GROUP, "id": wamid,
        "timestamp": (base_ts() + ts).to_string(), "type": "text", "text": {"body": body}});
    if let Some(c) = context {
        m["context"] = c;
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": OUR_NUMBER, "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": name}, "wa_id": from}],
            "messages": [m]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

/// Records what it was given and answers "noted"; while `hold` is set, waits for `release`.
#[derive(Default)]
struct RecordingBrain {
    inputs: Mutex<Vec<TurnInput>>,
    hold: Option<Arc<tokio::sync::Semaphore>>,
}

impl RecordingBrain {
    fn calls(&self) -> Vec<TurnInput> {
        self.inputs.lock().unwrap().clone()
    }
}

impl Brain for RecordingBrain {
    fn reply(&self, input: TurnInput) -> BrainFuture {
        self.inputs.lock().unwrap().push(input);
        let hold = self.hold.clone();
        Box::pin(async move {
            if let Some(h) = hold {
                // One permit per answer: the test releases them one by one.
                if let Ok(p) = h.acquire().await {
                    p.forget();
                }
            }
            Ok("noted".to_string().into())
        })
    }
    fn describe(&self) -> String {
        "recording".into()
    }
}

fn text_of(r: &fake_graph::Received) -> String {
    r.body["text"]["body"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// History texts of the group's stored session ("" when there is none).
fn history(app: &TestApp) -> Vec<String> {
    app.system
        .store
        .load_session(&group_key())
        .unwrap()
        .map(|s| s.history.into_iter().map(|t| t.text).collect())
        .unwrap_or_default()
}

/// Waits until every message of the group has been handled (left the inbox).
async fn settled(app: &TestApp) {
    let store = app.system.store.clone();
    assert!(
        eventually(Duration::from_secs(5), || store
            .unfinished_for(&group_key())
            .unwrap()
            .is_empty())
        .await,
        "the group's messages were never handled"
    );
}

/// Whether the router still runs a conversation actor for the group.
async fn group_actor_alive(app: &TestApp) -> bool {
    call_t!(
        app.system.router.get(),
        RouterMsg::Lookup,
        1000,
        group_key()
    )
    .unwrap()
    .is_some()
}

/// Sandra answers a group only when addressed: by name (any case, accents, punctuation, `@`),
/// by `@<business number>`, or by a reply to one of her own messages. Near-miss names stay
/// chatter, which the brain later sees as context. Every reply goes to the group, quotes the
/// question and names the asker.
#[tokio::test]
async fn addressed_by_name_number_or_reply_and_near_misses_stay_chatter() {
    let brain = Arc::new(RecordingBrain::default());
    let app = TestApp::spawn_with(|_| {}, brain.clone()).await;
    let ana = "16505551234";
    let ben = "16505559876";

    for (i, body) in [
        "Alessandra is late again",
        "who wants a sandrawich?",
        "I sent it to Sandr a",
    ]
    .iter()
    .enumerate()
    {
        let r = app
            .post_signed(&group_text(
                &format!("wamid.miss{i}"),
                ana,
                "Ana",
                body,
                i as i64,
                None,
            ))
            .await;
        assert_eq!(r.status(), 200);
    }
    settled(&app).await;
    assert_eq!(
        history(&app).len(),
        3,
        "chatter is remembered: {:?}",
        history(&app)
    );
    assert!(
        app.graph.accepted().is_empty(),
        "near misses are not addressed"
    );
    assert!(brain.calls().is_empty());

    // 1. By name, with an accent and punctuation.
    app.post_signed(&group_text(
        "wamid.name",
        ben,
        "Ben",
        "SÁNDRA, where do we meet?",
        10,
        None,
    ))
    .await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 1);
    let b = &sent[0].body;
    assert_eq!(b["recipient_type"], "group");
    assert_eq!(b["to"], GROUP);
    assert_eq!(b["context"]["message_id"], "wamid.name");
    assert_eq!(text_of(&sent[0]), "@Ben noted", "the reply names who asked");
    // Context remembered: the brain saw the earlier chatter, with its authors.
    let first = &brain.calls()[0];
    assert!(first.is_group);
    let seen: Vec<&str> = first.history.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(
        seen,
        [
            "Ana: Alessandra is late again",
            "Ana: who wants a sandrawich?",
            "Ana: I sent it to Sandr a"
        ]
    );
    assert_eq!(first.inputs[0].text, "SÁNDRA, where do we meet?");
    assert_eq!(first.inputs[0].author.as_deref(), Some("Ben"));

    // 2. By `@number`, formatted as WhatsApp may render it.
    app.post_signed(&group_text(
        "wamid.num",
        ana,
        "Ana",
        "@+1 555-078-3881 and dessert?",
        20,
        None,
    ))
    .await;
    let sent = app.graph.wait_accepted(2, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].body["to"], GROUP);
    assert_eq!(sent[1].body["context"]["message_id"], "wamid.num");
    assert_eq!(text_of(&sent[1]), "@Ana noted");

    // 3. By replying to Sandra's own message, known by its wamid (Meta's `context.from` left
    // out here, so only the wamid can tell).
    let store = app.system.store.clone();
    assert!(
        eventually(Duration::from_secs(5), || store
            .outbox_all()
            .unwrap()
            .iter()
            .all(|r| r.wamid.is_some()))
        .await
    );
    let sandras = store.outbox_all().unwrap()[0].wamid.clone().unwrap();
    app.post_signed(&group_text(
        "wamid.reply",
        ana,
        "Ana",
        "why there?",
        30,
        Some(json!({"id": sandras})),
    ))
    .await;
    let sent = app.graph.wait_accepted(3, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2].body["context"]["message_id"], "wamid.reply");
    assert_eq!(brain.calls()[2].inputs[0].text, "why there?");

    // A reply to another member, and the possessive, are chatter again.
    app.post_signed(&group_text(
        "wamid.member",
        ben,
        "Ben",
        "Sandra's idea is fine",
        40,
        Some(json!({"from": ana, "id": "wamid.miss0"})),
    ))
    .await;
    settled(&app).await;
    assert!(
        history(&app)
            .iter()
            .any(|t| t == "Ben: Sandra's idea is fine")
    );
    assert_eq!(app.graph.accepted().len(), 3);
    assert_eq!(brain.calls().len(), 3);
    app.stop().await;
}

/// Participants joining and leaving (`group_participants_update`) are recorded in the group's
/// conversation, never answered, and the brain knows about them when next addressed.
#[tokio::test]
async fn joins_and_leaves_are_remembered_as_group_context() {
    let brain = Arc::new(RecordingBrain::default());
    let app = TestApp::spawn_with(|_| {}, brain.clone()).await;
    for name in [
        "group_participants_joined.json",
        "group_participant_left.json",
    ] {
        assert_eq!(
            app.post_signed(&fixture(name)).await.status(),
            200,
            "{name}"
        );
    }
    // A redelivery is a duplicate, not a second join.
    assert_eq!(
        app.post_signed(&fixture("group_participants_joined.json"))
            .await
            .status(),
        200
    );
    settled(&app).await;
    assert_eq!(
        history(&app),
        [
            "[+16505557777 joined the group]",
            "[+16505557777 left the group]"
        ]
    );
    assert!(app.graph.accepted().is_empty());

    app.post_signed(&group_text(
        "wamid.who",
        "16505551234",
        "Ana",
        "Sandra, who left?",
        0,
        None,
    ))
    .await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(sent.len(), 1);
    let seen: Vec<String> = brain.calls()[0]
        .history
        .iter()
        .map(|t| t.text.clone())
        .collect();
    assert_eq!(
        seen,
        [
            "[+16505557777 joined the group]",
            "[+16505557777 left the group]"
        ]
    );
    app.stop().await;
}

/// Sandra removed from the group while answering: the conversation closes at once (actor
/// stopped, session and unanswered messages gone, nothing more sent, not even the answer in
/// progress), and later messages of that group are accepted and never answered.
#[tokio::test]
async fn sandra_removed_closes_the_conversation_and_nothing_more_is_sent() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let brain = Arc::new(RecordingBrain {
        inputs: Mutex::default(),
        hold: Some(gate.clone()),
    });
    let app = TestApp::spawn_with(|_| {}, brain.clone()).await;
    let ana = "16505551234";
    app.post_signed(&group_text(
        "wamid.q1",
        ana,
        "Ana",
        "Sandra, first question",
        0,
        None,
    ))
    .await;
    gate.add_permits(1);
    app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    settled(&app).await;

    // A second question is being answered when Meta says Sandra was removed.
    app.post_signed(&group_text(
        "wamid.q2",
        ana,
        "Ana",
        "Sandra, second question",
        10,
        None,
    ))
    .await;
    let b = brain.clone();
    assert!(eventually(Duration::from_secs(5), || b.calls().len() == 2).await);
    let r = app
        .post_signed(&fixture("group_business_removed.json"))
        .await;
    assert_eq!(r.status(), 200);

    let store = app.system.store.clone();
    assert!(store.is_closed(&group_key()).unwrap());
    assert!(store.load_session(&group_key()).unwrap().is_none());
    assert!(store.unfinished_for(&group_key()).unwrap().is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while group_actor_alive(&app).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the conversation actor never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The answer in progress finishes now, with no one left to commit it.
    gate.add_permits(10);

    // Later messages for the group are acknowledged and never queued: no turn, no reply.
    let r = app
        .post_signed(&group_text(
            "wamid.q3",
            ana,
            "Ana",
            "Sandra, are you there?",
            20,
            None,
        ))
        .await;
    assert_eq!(r.status(), 200);
    assert!(store.unfinished_for(&group_key()).unwrap().is_empty());
    assert!(!group_actor_alive(&app).await, "no conversation for it");
    // The answer held since before the removal takes one permit and finishes, with no actor
    // left to commit it.
    let b = brain.clone();
    assert!(eventually(Duration::from_secs(5), || gate.available_permits() == 9).await);
    assert_eq!(
        b.calls().len(),
        2,
        "the message after the removal never reached the brain"
    );
    assert_eq!(app.metric("conversations_closed").await, 1);
    assert_eq!(app.metric("messages_to_closed").await, 1);
    assert_eq!(
        app.graph.accepted().len(),
        1,
        "nothing sent after the removal"
    );
    assert!(store.load_session(&group_key()).unwrap().is_none());
    assert!(
        store
            .outbox_all()
            .unwrap()
            .iter()
            .all(|r| r.state != OutboxState::Pending),
        "no reply waits for the closed group"
    );
    app.stop().await;
}

/// Whether any reply for the group waits in the outbox.
fn reply_waiting(app: &TestApp) -> bool {
    app.system
        .store
        .outbox_all()
        .unwrap()
        .iter()
        .any(|r| r.key == group_key() && r.state == OutboxState::Pending)
}

/// A deleted group (`group_lifecycle_update`) closes its conversation and cancels a reply
/// still waiting to be sent; settings and status updates and malformed group webhooks are
/// acknowledged with 200 and change nothing.
#[tokio::test]
async fn group_deleted_closes_it_and_other_group_webhooks_are_accepted() {
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    // Meta is down for this chat: the reply waits in the outbox, retried.
    graph.fail_matching(
        "noted",
        Fault::Error {
            http: 503,
            code: 2,
            retry_after: Some(600),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let brain = Arc::new(RecordingBrain::default());
    let app = TestApp::spawn_in(dir, graph, |_| {}, brain.clone()).await;
    app.post_signed(&group_text(
        "wamid.d1",
        "16505551234",
        "Ana",
        "Sandra?",
        0,
        None,
    ))
    .await;
    settled(&app).await;
    let store = app.system.store.clone();
    assert!(eventually(Duration::from_secs(5), || reply_waiting(&app)).await);

    for body in [
        fixture("group_settings_update.json"),
        br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"group_status_update","value":{"groups":[{"group_id":"G","type":"group_suspend"}]}}]}]}"#.to_vec(),
        br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"group_participants_update","value":{"groups":7}}]}]}"#.to_vec(),
        br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"group_lifecycle_update","value":{"metadata":{"phone_number_id":"106540352242922"},"groups":[{"type":"group_delete"}]}}]}]}"#.to_vec(),
    ] {
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    assert!(!store.is_closed(&group_key()).unwrap());
    assert!(store.load_session(&group_key()).unwrap().is_some());

    assert_eq!(
        app.post_signed(&fixture("group_delete.json"))
            .await
            .status(),
        200
    );
    assert!(store.is_closed(&group_key()).unwrap());
    assert!(store.load_session(&group_key()).unwrap().is_none());
    assert!(!reply_waiting(&app), "the waiting reply is cancelled");
    let cancelled = store
        .outbox_all()
        .unwrap()
        .into_iter()
        .find(|r| r.key == group_key())
        .unwrap();
    assert!(
        matches!(&cancelled.state, OutboxState::Failed { reason, .. } if reason.contains("group deleted")),
        "{:?}",
        cancelled.state
    );
    app.stop().await;
}
