//! The webhook edge: handshake, signatures, size limit, parsing, exactly-once acceptance.

use std::time::Duration;

use crate::support::*;

/// Meta's GET handshake echoes the challenge byte for byte, and refuses anything else with 403.
#[tokio::test]
async fn verification_handshake() {
    let app = TestApp::spawn().await;
    let challenge = "1158201444&x=%20y";
    let ok = app
        .client
        .get(app.url("/api/channels/whatsapp"))
        .query(&[
            ("hub.mode", "subscribe"),
            ("hub.challenge", challenge),
            ("hub.verify_token", VERIFY_TOKEN),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), challenge);

    for q in [
        vec![
            ("hub.mode", "subscribe"),
            ("hub.challenge", "1"),
            ("hub.verify_token", "wrong"),
        ],
        vec![
            ("hub.mode", "unsubscribe"),
            ("hub.challenge", "1"),
            ("hub.verify_token", VERIFY_TOKEN),
        ],
        vec![
            ("hub.mode", "subscribe"),
            ("hub.verify_token", VERIFY_TOKEN),
        ],
        vec![],
    ] {
        let r = app
            .client
            .get(app.url("/api/channels/whatsapp"))
            .query(&q)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "query {q:?}");
    }
    app.stop().await;
}

/// Every shared fixture, signed, is answered 200 (unknown types and fields included).
#[tokio::test]
async fn every_fixture_is_accepted() {
    // The fixtures come from several business numbers; with none configured nothing is
    // filtered, so every message in them counts.
    let app = TestApp::spawn_with(
        |c| c.whatsapp.phone_number_id.clear(),
        std::sync::Arc::new(EchoBrain::default()),
    )
    .await;
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    // Fixtures that close a group go last: messages for a closed group are seen but neither
    // stored nor duplicates (groups::sandra_removed_closes_the_conversation_...).
    names.sort_by_key(|n| {
        let closes = sandra_actors::whatsapp::parse_webhook(&fixture(n))
            .is_ok_and(|b| !b.closed_groups.is_empty());
        (closes, n.clone())
    });
    assert!(names.len() >= 14, "fixtures missing: {names:?}");
    let mut messages = 0;
    let mut unique = std::collections::HashSet::new();
    for name in &names {
        let body = fixture(name);
        let parsed = sandra_actors::whatsapp::parse_webhook(&body);
        assert!(parsed.is_ok(), "{name} does not parse");
        let parsed = parsed.unwrap();
        messages += parsed.messages.len() as u64;
        unique.extend(parsed.messages.iter().map(|m| m.wamid.clone()));
        let r = app.post_signed(&body).await;
        assert_eq!(r.status(), 200, "{name}");
    }
    assert_eq!(app.metric("webhooks_accepted").await, names.len() as u64);
    // Every message is either stored or recognised as a re-delivery (some fixtures share ids).
    let stored = app.metric("messages_accepted").await;
    let dups = app.metric("messages_duplicate").await;
    assert_eq!(stored + dups, messages);
    assert_eq!(
        stored,
        unique.len() as u64,
        "one stored message per distinct wamid"
    );
    app.stop().await;
}

/// The byte-exact captures verify with the published signature vectors, and a re-serialized
/// body (the classic bug) does not.
#[tokio::test]
async fn byte_exact_captures_verify_with_published_vectors() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            "image_raw_escaped_bsuid.json",
            "sha256=d1fe956a8f6cc4d468c2a9cc6d2cef7e505843886bfaf4e1054ae9365c22f399",
        ),
        (
            "voice.json",
            "sha256=51d07a039a2534e41cb5f9e94eb1e461024ba4fa055ea40c9245bc5ecdc87967",
        ),
    ];
    for (name, sig) in cases {
        let body = fixture(name);
        assert_eq!(
            app.post_with(&body, Some(sig)).await.status(),
            200,
            "{name}"
        );
    }
    // Re-serialized without escapes: same content, different bytes, signature must fail.
    let body = fixture("image_raw_escaped_bsuid.json");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let reserialized = serde_json::to_vec(&v).unwrap();
    assert_ne!(reserialized, body);
    let r = app.post_with(&reserialized, Some(cases[0].1)).await;
    assert_eq!(r.status(), 401);
    app.stop().await;
}

/// Missing, malformed or wrong signatures get 401 and nothing is stored.
#[tokio::test]
async fn bad_signatures_are_refused() {
    let app = TestApp::spawn().await;
    let body = text_webhook("wamid.sig1", "15550001111", "hello", 0);
    let wrong = {
        let mut s = sign(&body);
        s.replace_range(7..9, if &s[7..9] == "00" { "11" } else { "00" });
        s
    };
    for sig in [
        None,
        Some("sha256="),
        Some("md5=abc"),
        Some(wrong.as_str()),
        Some(&sign(b"other body")[..]),
    ] {
        let r = app.post_with(&body, sig).await;
        assert_eq!(r.status(), 401, "signature {sig:?}");
    }
    assert_eq!(app.metric("webhooks_bad_signature").await, 5);
    assert_eq!(app.metric("messages_accepted").await, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.graph.sends().is_empty());
    app.stop().await;
}

/// Bodies over 3 MiB get 413.
#[tokio::test]
async fn oversized_body_is_413() {
    let app = TestApp::spawn().await;
    let mut body = text_webhook("wamid.big", "15550001111", "x", 1);
    body.extend(std::iter::repeat_n(b' ', 3 * 1024 * 1024));
    let r = app.post_signed(&body).await;
    assert_eq!(r.status(), 413);
    app.stop().await;
}

/// A signed body that is not JSON is kept in dead-letter and answered 200 (Meta must not retry).
#[tokio::test]
async fn signed_garbage_goes_to_dead_letter() {
    let app = TestApp::spawn().await;
    let r = app.post_signed(b"{\"object\": truncated").await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.metric("webhooks_not_json").await, 1);
    assert_eq!(app.metric("dead_letters").await, 1);
    app.stop().await;
}

/// The same message delivered twice, and ten times concurrently, is answered once.
#[tokio::test]
async fn duplicates_are_processed_once() {
    let app = TestApp::spawn().await;
    let body = text_webhook("wamid.dup1", "15550002222", "only once please", 0);
    assert_eq!(app.post_signed(&body).await.status(), 200);
    assert_eq!(app.post_signed(&body).await.status(), 200);

    let body2 = text_webhook("wamid.dup2", "15550003333", "concurrent", 1);
    let posts = (0..10).map(|_| app.post_signed(&body2));
    for r in futures_join_all(posts).await {
        assert_eq!(r.status(), 200);
    }
    let sent = app.graph.wait_accepted(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent_all = app.graph.accepted();
    assert_eq!(sent_all.len(), 2, "{sent:?}");
    let to: Vec<&str> = sent_all
        .iter()
        .map(|r| r.body["to"].as_str().unwrap())
        .collect();
    assert!(to.contains(&"15550002222") && to.contains(&"15550003333"));
    assert_eq!(app.metric("messages_accepted").await, 2);
    assert_eq!(app.metric("messages_duplicate").await, 10);
    app.stop().await;
}

/// Health: /healthz is always up; /readyz is ready once storage and actors run.
#[tokio::test]
async fn health_endpoints() {
    let app = TestApp::spawn().await;
    assert_eq!(app.status_of("/healthz").await, 200);
    assert_eq!(app.status_of("/readyz").await, 200);
    app.stop().await;
}

/// Webhooks for another business number of the same account are acknowledged (Meta must not
/// retry) but neither stored nor answered, and counted.
#[tokio::test]
async fn other_business_numbers_are_acknowledged_and_ignored() {
    let app = TestApp::spawn().await;
    let mut v: serde_json::Value = serde_json::from_slice(&fresh_fixture("text.json", 0)).unwrap();
    let wamid = v["entry"][0]["changes"][0]["value"]["messages"][0]["id"].clone();
    v["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999000111".into();
    let theirs = serde_json::to_vec(&v).unwrap();
    assert_eq!(app.post_signed(&theirs).await.status(), 200);
    assert_eq!(app.metric("webhooks_other_number").await, 1);
    assert_eq!(app.metric("items_other_number").await, 1);
    assert_eq!(app.metric("messages_accepted").await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.graph.sends().is_empty());

    // Not even remembered for de-duplication: the same message to our number is new.
    v["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = PHONE_NUMBER_ID.into();
    assert_eq!(
        v["entry"][0]["changes"][0]["value"]["messages"][0]["id"],
        wamid
    );
    assert_eq!(
        app.post_signed(&serde_json::to_vec(&v).unwrap())
            .await
            .status(),
        200
    );
    assert_eq!(app.metric("messages_accepted").await, 1);
    assert_eq!(app.metric("messages_duplicate").await, 0);
    app.graph.wait_accepted(1, Duration::from_secs(5)).await;
    assert_eq!(app.graph.accepted().len(), 1);
    app.stop().await;
}

/// /readyz names every WhatsApp setting that is missing.
#[tokio::test]
async fn readyz_names_missing_credentials() {
    let app = TestApp::spawn_with(
        |c| {
            c.whatsapp.access_token = Default::default();
            c.whatsapp.app_secret = Default::default();
        },
        std::sync::Arc::new(EchoBrain::default()),
    )
    .await;
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let text = r.text().await.unwrap();
    assert!(text.contains("whatsapp.access_token"), "{text}");
    assert!(text.contains("whatsapp.app_secret"), "{text}");
    assert!(!text.contains("whatsapp.verify_token"), "{text}");
    app.stop().await;
}

/// Admission control: with no free slot the webhook is shed with 503 and counted.
#[tokio::test]
async fn overload_is_shed_with_503() {
    let app = TestApp::spawn_with(
        |c| c.server.max_in_flight = 1,
        std::sync::Arc::new(EchoBrain::default()),
    )
    .await;
    // Many concurrent posts through one slot: some must be shed, none may fail otherwise.
    let bodies: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            text_webhook(
                &format!("wamid.load{i}"),
                &format!("1555000{i:04}"),
                "hi",
                1,
            )
        })
        .collect();
    let rs = futures_join_all(bodies.iter().map(|b| app.post_signed(b))).await;
    let codes: Vec<u16> = rs.iter().map(|r| r.status().as_u16()).collect();
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    let shed = codes.iter().filter(|c| **c == 503).count() as u64;
    assert_eq!(app.metric("webhooks_overloaded").await, shed);
    assert_eq!(app.metric("messages_accepted").await, 64 - shed);
    app.stop().await;
}

pub async fn futures_join_all<F: std::future::Future>(
    fs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in fs {
        set.push(f);
    }
    let mut out = Vec::with_capacity(set.len());
    let handles: Vec<_> = set.into_iter().map(Box::pin).collect();
    // Poll all concurrently.
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    for r in results {
        out.push(r.unwrap());
    }
    out
}
