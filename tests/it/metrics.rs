//! `GET /metrics`: Prometheus text with a `# TYPE` for every metric, and the webhook ack timer.

use crate::support::*;

/// Every kind of metric is declared (Prometheus and its tooling read `# TYPE`), the gauges and
/// histograms included, before anything was recorded into them.
#[tokio::test]
async fn metrics_declare_their_types() {
    let app = TestApp::spawn().await;
    let text = app.metrics_text().await;
    for line in [
        "# TYPE sandra_webhooks_accepted counter",
        "# TYPE sandra_messages_accepted counter",
        "# TYPE sandra_model_jobs_skipped counter",
        "# TYPE sandra_outbox_pending gauge",
        "# TYPE sandra_dead_letters gauge",
        "# TYPE sandra_token_invalid gauge",
        "# TYPE sandra_webhook_ack_seconds histogram",
        "# TYPE sandra_model_queue_wait_seconds histogram",
        "# TYPE sandra_llm_tokens_per_second histogram",
        "# TYPE sandra_time_to_reply_seconds histogram",
        "# TYPE sandra_transcription_rtf histogram",
        "# TYPE sandra_speech_rtf histogram",
        "# TYPE sandra_voice_notes_sent counter",
        "# HELP sandra_webhooks_accepted webhook POSTs answered 200",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing from /metrics:\n{text}"
        );
    }
    app.stop().await;
}

/// Every webhook POST answered is timed, whatever its status; other requests are not.
#[tokio::test]
async fn every_webhook_post_answered_is_timed() {
    let app = TestApp::spawn().await;
    let before = app.metric("webhook_ack_seconds_count").await;
    let a = text_webhook("wamid.ack1", "15550001111", "one", 1);
    let b = text_webhook("wamid.ack2", "15550001111", "two", 2);
    assert_eq!(app.post_signed(&a).await.status(), 200);
    assert_eq!(app.post_signed(&b).await.status(), 200);
    assert_eq!(app.post_signed(&a).await.status(), 200, "a duplicate");
    assert_eq!(app.post_with(&b, Some("sha256=00")).await.status(), 401);
    // The subscription handshake is a GET on the same path: not a webhook delivery.
    app.status_of("/api/channels/whatsapp?hub.mode=subscribe")
        .await;
    assert_eq!(app.metric("webhook_ack_seconds_count").await, before + 4);
    let text = app.metrics_text().await;
    assert!(
        text.lines()
            .any(|l| l == "sandra_webhook_ack_seconds_bucket{le=\"+Inf\"} 4"),
        "{text}"
    );
    app.stop().await;
}
