//! The sender against the fake Graph API's faults: retries, window, token, permanent errors,
//! timeouts reconciled by status webhooks.

use std::sync::Arc;
use std::time::Duration;

use sandra_actors::secret::SecretString;
use sandra_actors::sender::SenderMsg;
use sandra_actors::store::OutboxState;

use crate::support::*;

async fn one_turn(app: &TestApp, wamid: &str, from: &str) {
    let before = app.system.store.outbox_all().unwrap().len();
    assert_eq!(
        app.post_signed(&text_webhook(wamid, from, "hi", 0))
            .await
            .status(),
        200
    );
    // The turn commits its reply asynchronously; the tests inspect that record.
    assert!(
        eventually(Duration::from_secs(5), || app
            .system
            .store
            .outbox_all()
            .unwrap()
            .len()
            > before)
        .await
    );
}

fn only_record(app: &TestApp) -> sandra_actors::store::OutboxRecord {
    let all = app.system.store.outbox_all().unwrap();
    assert_eq!(all.len(), 1);
    all.into_iter().next().unwrap()
}

/// Throughput and pair-rate errors (either HTTP status) and 5xx are retried, honouring
/// Retry-After, and the message is delivered once.
#[tokio::test]
async fn transient_errors_are_retried() {
    let app = TestApp::spawn().await;
    app.graph.inject([
        Fault::Error {
            http: 429,
            code: 130429,
            retry_after: Some(1),
        },
        Fault::Error {
            http: 400,
            code: 131056,
            retry_after: None,
        },
        Fault::Error {
            http: 503,
            code: 131000,
            retry_after: None,
        },
    ]);
    one_turn(&app, "wamid.r1", "15550003030").await;
    let sent = app.graph.wait_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1);
    let attempts = app.graph.sends();
    assert_eq!(attempts.len(), 4);
    assert!(
        attempts[1].at.duration_since(attempts[0].at) >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    let rec = only_record(&app);
    assert_eq!(rec.state, OutboxState::Sent);
    assert_eq!(rec.attempts, 4);
    app.stop().await;
}

/// Permanent errors are not retried and the reason is recorded on the message.
#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let app = TestApp::spawn().await;
    app.graph.inject([Fault::Error {
        http: 400,
        code: 131026,
        retry_after: None,
    }]);
    one_turn(&app, "wamid.p1", "15550004040").await;
    assert!(
        eventually(Duration::from_secs(5), || matches!(
            only_record(&app).state,
            OutboxState::Failed { .. }
        ))
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.graph.sends().len(), 1);
    match only_record(&app).state {
        OutboxState::Failed { code, reason } => {
            assert_eq!(code, Some(131026));
            assert!(!reason.is_empty());
        }
        s => panic!("{s:?}"),
    }
    app.stop().await;
}

/// 131047 closes the window: the reply is held, not retried and not lost (see window.rs for
/// its release).
#[tokio::test]
async fn window_closed_stops_free_form_sends() {
    let app = TestApp::spawn().await;
    app.graph.inject([Fault::Error {
        http: 400,
        code: 131047,
        retry_after: None,
    }]);
    let from = "15550005050";
    one_turn(&app, "wamid.w1", from).await;
    assert!(
        eventually(Duration::from_secs(5), || app
            .system
            .store
            .outbox_all()
            .unwrap()
            .iter()
            .any(|r| matches!(r.state, OutboxState::Held { .. })))
        .await
    );
    // The user has not written since: the next reply (from an old, re-delivered turn) is held.
    let key = sandra_actors::whatsapp::ConversationKey::new(
        PHONE_NUMBER_ID,
        &sandra_actors::whatsapp::ChatId::Phone(from.into()),
    );
    assert!(app.system.store.window_closed_at(&key).unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.graph.sends().len(), 1, "131047 is not retried");
    app.stop().await;
}

/// A 190 pauses all sending and shows in /readyz; replacing the token resumes it.
#[tokio::test]
async fn invalid_token_pauses_until_replaced() {
    let app = TestApp::spawn_with(
        |c| c.whatsapp.access_token = SecretString::from("expired-token"),
        Arc::new(EchoBrain::default()),
    )
    .await;
    one_turn(&app, "wamid.t1", "15550006060").await;
    // The first Graph call to meet the 190 is the read receipt or the reply, whichever the
    // sender runs first: either pauses sending.
    let graph = &app.graph;
    assert!(
        eventually(Duration::from_secs(5), || !graph.sends().is_empty()
            || !graph.reads().is_empty())
        .await
    );
    let mut ready = 0;
    for _ in 0..100 {
        ready = app.status_of("/readyz").await;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 503);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert!(ready.text().await.unwrap().contains("190"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        app.graph.sends().len() <= 1,
        "no retries while the token is invalid"
    );
    assert_eq!(only_record(&app).state, OutboxState::Pending);

    app.system
        .credentials
        .replace(SecretString::from(ACCESS_TOKEN));
    app.system
        .sender
        .get()
        .cast(SenderMsg::TokenReplaced)
        .unwrap();
    assert_eq!(
        app.graph
            .wait_accepted(1, Duration::from_secs(5))
            .await
            .len(),
        1
    );
    assert_eq!(app.status_of("/readyz").await, 200);
    app.stop().await;
}

/// A send that times out is not blindly resent: the status webhook carrying our callback data
/// proves Meta took it, and the record is reconciled instead.
#[tokio::test]
async fn timeout_is_reconciled_by_status_webhook() {
    let app = TestApp::spawn_with(
        |c| {
            c.whatsapp.request_timeout = Duration::from_millis(300);
            c.sender.reconcile_wait = Duration::from_secs(3);
        },
        Arc::new(EchoBrain::default()),
    )
    .await;
    app.graph.inject([Fault::Hang(Duration::from_secs(2))]);
    let to = "15550007070";
    one_turn(&app, "wamid.h1", to).await;
    assert!(eventually(Duration::from_secs(5), || only_record(&app).attempts == 1).await);
    let key = only_record(&app).idempotency_key;
    // Meta did deliver it: its status webhook echoes biz_opaque_callback_data.
    let mut status: serde_json::Value =
        serde_json::from_slice(&status_webhook("wamid.meta-took-it", "delivered", to, None))
            .unwrap();
    status["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] =
        key.into();
    assert_eq!(
        app.post_signed(status.to_string().as_bytes())
            .await
            .status(),
        200
    );
    let rec = only_record(&app);
    assert_eq!(rec.state, OutboxState::Sent);
    assert_eq!(rec.wamid.as_deref(), Some("wamid.meta-took-it"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(app.graph.sends().len(), 1, "not sent a second time");
    app.stop().await;
}

/// A burst of 1,000 replies to 200 recipients never exceeds the number's rate in any one-second
/// window, nor the per-recipient allowance, measured at the fake's receive times; every reply is
/// delivered once, and each recipient's replies arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_respects_rate_and_pair_limits() {
    const RATE: usize = 250;
    const PER_RECIPIENT: usize = 2;
    let app = TestApp::spawn_with(
        |c| {
            c.sender.rate_per_second = RATE as u32;
            c.sender.recipient_burst = PER_RECIPIENT as u32;
            c.sender.recipient_window = Duration::from_secs(1);
            c.sender.max_in_flight = 64;
        },
        Arc::new(EchoBrain::default()),
    )
    .await;
    let store = app.system.store.clone();
    let now = base_ts() + 3000;
    for r in 0..200 {
        let target = sandra_actors::whatsapp::ReplyTarget {
            phone: Some(format!("1666{r:07}")),
            ..Default::default()
        };
        let key = sandra_actors::whatsapp::ConversationKey::new(
            PHONE_NUMBER_ID,
            &sandra_actors::whatsapp::ChatId::Phone(format!("1666{r:07}")),
        );
        let mut session = sandra_actors::session::SessionState::new(key, target.clone());
        session.last_inbound_at = Some(now);
        let replies: Vec<_> = (0..5)
            .map(|i| sandra_actors::store::NewOutbound {
                target: target.clone(),
                body: sandra_actors::store::OutboundBody::Text {
                    body: format!("part {i}"),
                },
                context_message_id: None,
                window_expires_at: session.window_expires_at(),
            })
            .collect();
        store.commit_turn(&session, &[], &replies).unwrap();
    }
    app.system.sender.get().cast(SenderMsg::Kick).unwrap();
    let got = app.graph.wait_accepted(1000, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.graph.sends().len(), 1000, "nothing sent twice");

    let times: Vec<std::time::Instant> = got.iter().map(|r| r.at).collect();
    let max_in_window = |ts: &[std::time::Instant], w: Duration| {
        let mut best = 0;
        let mut j = 0;
        for i in 0..ts.len() {
            while ts[i].duration_since(ts[j]) >= w {
                j += 1;
            }
            best = best.max(i - j + 1);
        }
        best
    };
    let mut sorted = times.clone();
    sorted.sort();
    let peak = max_in_window(&sorted, Duration::from_secs(1));
    assert!(peak <= RATE, "{peak} sends in one second, limit {RATE}");
    let mut by_recipient: std::collections::HashMap<String, Vec<(std::time::Instant, String)>> =
        Default::default();
    for r in &got {
        by_recipient
            .entry(r.body["to"].as_str().unwrap().to_string())
            .or_default()
            .push((r.at, r.body["text"]["body"].as_str().unwrap().to_string()));
    }
    assert_eq!(by_recipient.len(), 200);
    for (to, mut v) in by_recipient {
        v.sort_by_key(|(t, _)| *t);
        let order: Vec<&str> = v.iter().map(|(_, b)| b.as_str()).collect();
        assert_eq!(
            order,
            ["part 0", "part 1", "part 2", "part 3", "part 4"],
            "order to {to}"
        );
        let ts: Vec<_> = v.iter().map(|(t, _)| *t).collect();
        let peak = max_in_window(&ts, Duration::from_secs(1));
        assert!(
            peak <= PER_RECIPIENT,
            "{peak} messages to {to} within a second"
        );
    }
    let spent = sorted.last().unwrap().duration_since(sorted[0]);
    assert!(
        spent >= Duration::from_secs(3),
        "1000 sends at {RATE}/s cannot take {spent:?}"
    );
    app.stop().await;
}

/// Puts one pending reply to `to` in the outbox under `dir`, marked as being sent since
/// `marked_ms_ago` ago, as a process killed during the Graph call leaves it. Returns its id.
async fn marked_reply(dir: &std::path::Path, to: &str, marked_ms_ago: i64) -> u64 {
    use sandra_actors::store::{NewOutbound, OutboundBody, Store, now_ms};
    let store = Store::open(&dir.join("data")).unwrap();
    let batch =
        sandra_actors::whatsapp::parse_webhook(&text_webhook(&format!("wamid.{to}"), to, "hi", 0))
            .unwrap();
    let rec = store
        .accept(&batch, now_ms())
        .unwrap()
        .new_messages
        .remove(0);
    let session =
        sandra_actors::session::SessionState::new(rec.key.clone(), rec.message.reply_target());
    let reply = NewOutbound {
        target: rec.message.reply_target(),
        body: OutboundBody::Text {
            body: format!("reply to {to}"),
        },
        context_message_id: None,
        window_expires_at: None,
    };
    let id = store.commit_turn(&session, &[rec.seq], &[reply]).unwrap()[0];
    store
        .mark_sending(id, now_ms() - marked_ms_ago)
        .unwrap()
        .unwrap();
    store.sync().await.unwrap();
    drop(store);
    tokio::time::sleep(Duration::from_millis(100)).await;
    id
}

/// After a crash during a send, the record's durable sending marker holds it back for
/// `reconcile_wait`: if the status webhook shows Meta took it, it is never sent again; if none
/// comes, it is sent once the wait is over, not before.
#[tokio::test]
async fn send_interrupted_by_a_crash_waits_for_reconciliation() {
    let dir = tempfile::tempdir().unwrap();
    let (took, lost, stale) = ("15550008181", "15550008282", "15550008383");
    let took_id = marked_reply(dir.path(), took, 0).await;
    let marked_at = std::time::Instant::now();
    marked_reply(dir.path(), lost, 0).await;
    // A marker older than the wait does not delay anything.
    marked_reply(dir.path(), stale, 60_000).await;
    let wait = Duration::from_secs(2);
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    let app = TestApp::spawn_in(
        dir,
        graph,
        |c| c.sender.reconcile_wait = wait,
        Arc::new(EchoBrain::default()),
    )
    .await;
    let first = app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(first[0].body["to"], stale);
    let mut status: serde_json::Value =
        serde_json::from_slice(&status_webhook("wamid.meta-had-it", "sent", took, None)).unwrap();
    status["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] =
        format!("sandra:{took_id}").into();
    assert_eq!(
        app.post_signed(status.to_string().as_bytes())
            .await
            .status(),
        200
    );
    let sent = app.graph.wait_accepted(2, Duration::from_secs(8)).await;
    assert_eq!(sent[1].body["to"], lost);
    assert!(
        sent[1].at.duration_since(marked_at) >= wait,
        "sent before reconcile_wait had passed"
    );
    // Give the reconciled one every chance to go out wrongly.
    tokio::time::sleep(wait).await;
    let to_took = app
        .graph
        .sends()
        .iter()
        .filter(|r| r.body["to"] == took)
        .count();
    assert_eq!(to_took, 0, "a reply Meta already had was sent again");
    let rec = app.system.store.outbox_record(took_id).unwrap().unwrap();
    assert_eq!(rec.state, OutboxState::Sent);
    assert_eq!(rec.sending_since_ms, None);
    // The sends' outcomes cleared their markers.
    for r in app.system.store.outbox_all().unwrap() {
        assert_eq!(r.sending_since_ms, None, "{r:?}");
    }
    app.stop().await;
}
