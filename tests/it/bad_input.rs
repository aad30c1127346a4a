//! Malformed webhook bodies, as a stranger (or a broken proxy) might send them: each gets a clear
//! answer, is kept where a human can look at it when it was signed, and never stops Sandra from
//! answering the next genuine message. `docs/robustness.md` lists these with their outcomes.

use std::time::Duration;

use crate::support::*;

/// After each bad input Sandra still answers a genuine message: nothing wedged, nothing crashed.
async fn still_answers(app: &TestApp, n: usize) {
    let wamid = format!("wamid.alive{n}");
    let body = text_webhook(
        &wamid,
        "15550009000",
        &format!("still there {n}?"),
        n as i64,
    );
    assert_eq!(app.post_signed(&body).await.status(), 200);
    let sent = app.graph.wait_accepted(n, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), n, "the genuine message {n} was not answered");
}

/// Signed bodies that are not a usable webhook: invalid UTF-8, JSON nested past serde's
/// recursion limit, truncated JSON, an empty body, JSON that is not an object. Each is
/// acknowledged 200 (Meta must not retry what can never parse), kept in dead-letter with the
/// reason, and counted.
#[tokio::test]
async fn signed_unparseable_bodies_are_kept_not_retried() {
    let app = TestApp::spawn().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("invalid utf-8", b"{\"object\":\"\xff\xfe\"}".to_vec()),
        ("deeply nested", deep.into_bytes()),
        (
            "truncated",
            b"{\"object\":\"whatsapp_business_account\",\"entry\":[".to_vec(),
        ),
        ("empty", Vec::new()),
    ];
    for (i, (what, body)) in bodies.iter().enumerate() {
        let r = app.post_signed(body).await;
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(
            app.metric("dead_letters").await,
            i as u64 + 1,
            "{what} was not kept in dead-letter"
        );
    }
    assert_eq!(app.metric("webhooks_not_json").await, bodies.len() as u64);
    still_answers(&app, 1).await;
    app.stop().await;
}

/// JSON of the wrong shape (not an object, fields of the wrong type, unknown objects): 200, so
/// Meta does not retry it for a week, and every body is accounted for, either kept in
/// dead-letter (it does not fit Meta's envelope at all) or counted as an ignored item (an
/// envelope with parts Sandra does not know). Nothing is stored as a message or answered.
#[tokio::test]
async fn wrongly_shaped_json_is_accepted_and_ignored() {
    let app = TestApp::spawn().await;
    let bodies: [&[u8]; 6] = [
        b"[]",
        b"null",
        b"42",
        br#"{"object":"page","entry":[{"id":"1","changes":[]}]}"#,
        br#"{"object":"whatsapp_business_account","entry":"not a list"}"#,
        br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"messages":"nope"}}]}]}"#,
    ];
    for body in bodies {
        let r = app.post_signed(body).await;
        assert!(
            r.status() == 200,
            "{} -> {}",
            String::from_utf8_lossy(body),
            r.status()
        );
    }
    assert_eq!(app.metric("messages_accepted").await, 0);
    let kept = app.metric("dead_letters").await + app.metric("items_ignored").await;
    assert!(
        kept >= bodies.len() as u64,
        "only {kept} of {} bodies were kept or counted",
        bodies.len()
    );
    still_answers(&app, 1).await;
    app.stop().await;
}

/// The content type is not what the signature covers: a correctly signed body is accepted
/// whatever `Content-Type` a proxy put on it, and an unsigned one is refused whatever it claims.
#[tokio::test]
async fn content_type_does_not_matter_the_signature_does() {
    let app = TestApp::spawn().await;
    let body = text_webhook("wamid.ct1", "15550009001", "plain text type", 0);
    for (ct, sig, want) in [
        ("text/plain", Some(sign(&body)), 200),
        ("application/x-www-form-urlencoded", Some(sign(&body)), 200),
        ("application/json", None, 401),
    ] {
        let mut req = app
            .client
            .post(app.url("/api/channels/whatsapp"))
            .header("content-type", ct)
            .body(body.clone());
        if let Some(s) = &sig {
            req = req.header("X-Hub-Signature-256", s);
        }
        assert_eq!(req.send().await.unwrap().status(), want, "{ct}");
    }
    // The two accepted copies are one message.
    let sent = app.graph.wait_accepted(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(app.graph.accepted().len(), 1);
    app.stop().await;
}

/// A valid signature header for a *different* body, a header with the right MAC in upper case
/// hex, and a header repeated: refused (401) or accepted exactly as the header allows.
#[tokio::test]
async fn signature_header_variants() {
    let app = TestApp::spawn().await;
    let body = text_webhook("wamid.sv1", "15550009002", "variants", 0);
    let upper = {
        let s = sign(&body);
        format!("sha256={}", s["sha256=".len()..].to_uppercase())
    };
    // hex decoding is case-insensitive: the same MAC in upper case is the same signature.
    assert_eq!(app.post_with(&body, Some(&upper)).await.status(), 200);
    let other = sign(b"{}");
    assert_eq!(app.post_with(&body, Some(&other)).await.status(), 401);
    let sent = app.graph.wait_accepted(1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1);
    app.stop().await;
}
