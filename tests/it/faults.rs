//! The sender against a Graph API that misbehaves for a while: a shuffled mix of 5xx envelopes
//! (codes 1 and 2), hangs past the client timeout, connections closed without an answer,
//! throughput (130429) and pair-rate (131056) errors, an injected 190 and a real token rotation,
//! interleaved with normal answers; then the faults clear. Every reply goes out exactly once,
//! Meta's limits are never exceeded (measured at the fake's receive times), and a permanent
//! error is never retried.
//!
//! Size from `SANDRA_FAULT_MESSAGES`, `SANDRA_FAULT_CONVERSATIONS`, `SANDRA_FAULT_COUNT`,
//! `SANDRA_FAULT_SEED`; `scripts/fault-test.sh` runs a longer one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use sandra_actors::secret::SecretString;
use sandra_actors::sender::SenderMsg;
use sandra_actors::store::OutboxState;

use crate::support::*;

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}")),
        Err(_) => default,
    }
}

/// The text of message `i`; EchoBrain repeats it, so a reply names the messages it answers.
fn text(i: usize) -> String {
    format!("<f{i:05}>")
}

fn answered_in(reply: &str) -> Vec<usize> {
    reply
        .split("<f")
        .skip(1)
        .filter_map(|rest| rest.split('>').next()?.parse().ok())
        .collect()
}

/// An outbox record's text, through its stored form (robust to new body kinds).
fn text_of(rec: &sandra_actors::store::OutboxRecord) -> String {
    serde_json::to_value(&rec.body).unwrap()["body"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The most timestamps (sorted) within any window of length `w`.
fn max_in_window(ts: &[Instant], w: Duration) -> usize {
    let mut best = 0;
    let mut j = 0;
    for i in 0..ts.len() {
        while ts[i].duration_since(ts[j]) >= w {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best
}

/// The fault mix: `n` faults of every kind in turn, shuffled among `n` normal answers.
fn fault_mix(n: usize, seed: u64) -> Vec<Fault> {
    let kinds = [
        Fault::Error {
            http: 500,
            code: 1,
            retry_after: None,
        },
        Fault::Error {
            http: 503,
            code: 2,
            retry_after: None,
        },
        Fault::Hang(Duration::from_secs(1)),
        Fault::Drop,
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
            http: 401,
            code: 190,
            retry_after: None,
        },
    ];
    let mut mix: Vec<Fault> = (0..n).map(|i| kinds[i % kinds.len()].clone()).collect();
    mix.extend(std::iter::repeat_n(Fault::Pass, n));
    mix.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    mix
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_clear_and_every_reply_goes_out_once() {
    const RATE: usize = 25;
    const PER_RECIPIENT: usize = 2;
    const RECIPIENT_WINDOW: Duration = Duration::from_secs(1);
    let messages = env_or("SANDRA_FAULT_MESSAGES", 120) as usize;
    let conversations = env_or("SANDRA_FAULT_CONVERSATIONS", 30).max(1) as usize;
    let faults = env_or("SANDRA_FAULT_COUNT", 70) as usize;
    let seed = env_or(
        "SANDRA_FAULT_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    eprintln!(
        "fault test: {messages} messages, {conversations} conversations, {faults} faults, \
         SANDRA_FAULT_SEED={seed}"
    );
    let started = Instant::now();
    let app = TestApp::spawn_with(
        |c| {
            c.whatsapp.request_timeout = Duration::from_millis(300);
            c.sender.rate_per_second = RATE as u32;
            c.sender.recipient_burst = PER_RECIPIENT as u32;
            c.sender.recipient_window = RECIPIENT_WINDOW;
            c.sender.max_in_flight = 16;
            // Transient faults must never exhaust a message's attempts here.
            c.sender.max_attempts = 1000;
            c.sender.backoff_base = Duration::from_millis(50);
            c.sender.backoff_max = Duration::from_millis(500);
            c.sender.reconcile_wait = Duration::from_millis(500);
        },
        Arc::new(EchoBrain::default()),
    )
    .await;
    let graph = app.graph.clone();
    graph.set_webhook_url(Some(app.url("/api/channels/whatsapp")));
    graph.send_status_webhooks(Duration::from_millis(20));

    // The operator: whenever Sandra reports the token invalid, hand it the token the fake takes
    // now (what SIGHUP does with a re-read config).
    let replaced = Arc::new(AtomicUsize::new(0));
    let operator = {
        let system = app.system.clone();
        let graph = graph.clone();
        let replaced = replaced.clone();
        tokio::spawn(async move {
            loop {
                if system.sender_health.token_invalid.load(Ordering::SeqCst) {
                    replaced.fetch_add(1, Ordering::SeqCst);
                    system
                        .credentials
                        .replace(SecretString::from(graph.token()));
                    let _ = system.sender.get().cast(SenderMsg::TokenReplaced);
                    // Give the sender time to take it before looking again.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Two messages Meta refuses for good, each alone in its chat (so no other reply shares the
    // text that triggers the refusal).
    let poison = [("POISON-131026", 131026), ("POISON-100", 100)];
    for (needle, code) in poison {
        graph.fail_matching(
            needle,
            Fault::Error {
                http: 400,
                code,
                retry_after: None,
            },
        );
    }
    graph.inject(fault_mix(faults, seed));

    let post = |i: usize| {
        let c = i % conversations;
        text_webhook(
            &format!("wamid.fault.{i:05}"),
            &format!("1888{c:07}"),
            &text(i),
            (i / conversations) as i64,
        )
    };
    for (n, (needle, _)) in poison.iter().enumerate() {
        let body = text_webhook(
            &format!("wamid.poison.{n}"),
            &format!("1899{n:07}"),
            needle,
            0,
        );
        assert_eq!(app.post_signed(&body).await.status(), 200);
    }
    for i in 0..messages / 2 {
        assert_eq!(app.post_signed(&post(i)).await.status(), 200);
    }
    let store = app.system.store.clone();
    let failed = |needle: &str| {
        store
            .outbox_all()
            .unwrap()
            .into_iter()
            .find(|r| text_of(r).contains(needle))
    };
    assert!(
        eventually(Duration::from_secs(60), || poison.iter().all(|(n, _)| {
            failed(n).is_some_and(|r| matches!(r.state, OutboxState::Failed { .. }))
        }))
        .await,
        "the permanently refused messages were not recorded as failed"
    );
    // The token is rotated at Meta mid-run: every call fails with 190 until Sandra has it.
    graph.set_token("EAAG-rotated-token");
    for i in messages / 2..messages {
        assert_eq!(app.post_signed(&post(i)).await.status(), 200);
    }

    // The faults clear: wait until every reply is out and nothing is left to send.
    let answered_all = |g: &FakeGraph| {
        let mut seen = vec![false; messages];
        for r in g.accepted() {
            for i in answered_in(r.body["text"]["body"].as_str().unwrap_or_default()) {
                if i < messages {
                    seen[i] = true;
                }
            }
        }
        seen.iter().all(|s| *s)
    };
    let within = Duration::from_secs(120 + (messages + faults) as u64 / 5);
    let settled = eventually(within, || {
        graph.faults_left() == 0
            && answered_all(&graph)
            && store.outbox_pending_count() == 0
            && graph.status_webhooks().1 == 0
    })
    .await;
    operator.abort();
    let sends = graph.sends();
    let accepted = graph.accepted();
    eprintln!(
        "fault test: {:.1} s; {} attempts, {} accepted, {} faults left, token replaced {} times, \
         status webhooks {:?}",
        started.elapsed().as_secs_f64(),
        sends.len(),
        accepted.len(),
        graph.faults_left(),
        replaced.load(Ordering::SeqCst),
        graph.status_webhooks(),
    );
    assert!(settled, "not every reply went out after the faults cleared");

    // Exactly once: per message, and per outbox record.
    let mut replies = vec![0usize; messages];
    let mut per_record: HashMap<&str, usize> = HashMap::new();
    for r in &accepted {
        for i in answered_in(r.body["text"]["body"].as_str().unwrap_or_default()) {
            replies[i] += 1;
        }
        *per_record
            .entry(
                r.body["biz_opaque_callback_data"]
                    .as_str()
                    .unwrap_or_default(),
            )
            .or_default() += 1;
    }
    let twice: Vec<usize> = (0..messages).filter(|i| replies[*i] > 1).collect();
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    let records_twice: Vec<_> = per_record.iter().filter(|(_, n)| **n > 1).collect();
    assert!(records_twice.is_empty(), "sent twice: {records_twice:?}");
    for rec in store.outbox_all().unwrap() {
        let body = text_of(&rec);
        match poison.iter().find(|(n, _)| body.contains(n)) {
            Some((_, code)) => {
                assert!(
                    matches!(rec.state, OutboxState::Failed { code: Some(c), .. } if c == *code),
                    "{rec:?}"
                );
                assert_eq!(rec.attempts, 1, "a permanent error is not retried: {rec:?}");
            }
            None => assert_eq!(rec.state, OutboxState::Sent, "{rec:?}"),
        }
    }
    for (needle, _) in poison {
        let tries = sends
            .iter()
            .filter(|r| {
                r.body["text"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(needle))
            })
            .count();
        assert_eq!(tries, 1, "{needle} was attempted {tries} times");
    }
    assert!(
        replaced.load(Ordering::SeqCst) >= 1,
        "the token rotation was noticed"
    );

    // Meta's limits, at the fake's receive times, over every call (failed ones count too).
    let mut times: Vec<Instant> = sends.iter().map(|r| r.at).collect();
    times.sort();
    let peak = max_in_window(&times, Duration::from_secs(1));
    assert!(peak <= RATE, "{peak} calls within one second, limit {RATE}");
    let mut by_recipient: HashMap<String, Vec<Instant>> = HashMap::new();
    for r in &sends {
        by_recipient
            .entry(r.body["to"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(r.at);
    }
    for (to, mut ts) in by_recipient {
        ts.sort();
        let peak = max_in_window(&ts, RECIPIENT_WINDOW);
        assert!(
            peak <= PER_RECIPIENT,
            "{peak} calls to {to} within {RECIPIENT_WINDOW:?}, limit {PER_RECIPIENT}"
        );
    }
    eprintln!("fault test: peak {peak} calls/s (limit {RATE})");
    app.stop().await;
}

/// The fake's `Fault::Drop` really closes the connection without a byte of answer (otherwise
/// the test above would exercise a 500, not a dropped connection), and the next send on a new
/// connection is answered normally.
#[tokio::test]
async fn fake_drop_closes_the_connection_unanswered() {
    let graph = FakeGraph::start(ACCESS_TOKEN).await;
    graph.inject([Fault::Drop]);
    let client = reqwest::Client::new();
    let send = || {
        client
            .post(format!("{}/v26.0/{PHONE_NUMBER_ID}/messages", graph.url()))
            .bearer_auth(ACCESS_TOKEN)
            .json(&serde_json::json!({"messaging_product": "whatsapp", "to": "1555", "type": "text", "text": {"body": "x"}}))
            .send()
    };
    let dropped = send().await;
    assert!(dropped.is_err(), "got an answer: {dropped:?}");
    assert_eq!(send().await.unwrap().status(), 200);
    assert_eq!(graph.sends().len(), 2);
    assert_eq!(graph.accepted().len(), 1);
}

/// Meta took a send but the connection died before its answer came back. Like a timeout, that
/// is ambiguous, so the retry must give Meta's status webhook (which proves it has the message)
/// time to arrive instead of sending a second copy at once.
#[tokio::test]
async fn dropped_answer_is_reconciled_not_resent() {
    let app = TestApp::spawn_with(
        |c| c.sender.reconcile_wait = Duration::from_secs(3),
        Arc::new(EchoBrain::default()),
    )
    .await;
    let graph = app.graph.clone();
    graph.set_webhook_url(Some(app.url("/api/channels/whatsapp")));
    graph.send_status_webhooks(Duration::from_millis(200));
    graph.inject([Fault::DropAfterAccept]);
    let body = text_webhook("wamid.dropped.1", "15550008080", "hello", 0);
    assert_eq!(app.post_signed(&body).await.status(), 200);
    let store = app.system.store.clone();
    assert!(
        eventually(Duration::from_secs(20), || {
            let all = store.outbox_all().unwrap();
            all.len() == 1
                && all[0].state == OutboxState::Sent
                && matches!(graph.status_webhooks(), (d, 0, 0) if d >= 1)
        })
        .await,
        "the reply was not settled: {:?}",
        store.outbox_all().unwrap()
    );
    assert_eq!(
        graph.accepted().len(),
        1,
        "Meta got the reply {} times",
        graph.accepted().len()
    );
    app.stop().await;
}
