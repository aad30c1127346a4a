//! HTTP: Meta's webhook endpoint, health and metrics, and the listener that serves them. The
//! only module that knows routes.
//!
//! The webhook POST path is: admission permit → raw bytes (at most `max_body_bytes`) →
//! HMAC-SHA256 check over those exact bytes (constant time) → non-exhaustive parse, keeping
//! only our business number → one sled transaction (dedup + inbox) → group-committed flush →
//! cast to the router → 200. It never waits for a model; admission control sheds load with 503
//! (Meta retries) because actor mailboxes are unbounded. The permit is taken before the body is
//! read, so a shed request costs no buffer.
//!
//! [`serve`] bounds what a client can hold: a connection slot (`max_connections`), the time to
//! send a request head (`header_timeout`) and the time to get an answer, body upload included
//! (`request_timeout`, 408).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sandra_actors::System;
use sandra_actors::metrics::Metrics;
use sandra_actors::router::RouterMsg;
use sandra_actors::secret::{ExposeSecret, SecretString};
use sandra_actors::store::now_ms;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::TimeoutLayer;

/// Shared state of the HTTP layer.
#[derive(Clone)]
pub struct HttpState {
    pub system: System,
    pub verify_token: SecretString,
    pub app_secret: SecretString,
    pub admission: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    /// Largest webhook body read, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// The business number Sandra answers for; webhook items for any other number are
    /// acknowledged and dropped. Empty: not configured, nothing is filtered.
    pub phone_number_id: String,
    /// Settings Sandra cannot talk to Meta without (`Config::missing_whatsapp_settings`),
    /// reported by `/readyz`.
    pub missing_settings: Vec<&'static str>,
}

pub fn router(state: HttpState, request_timeout: Duration) -> Router {
    Router::new()
        .route("/api/channels/whatsapp", get(verify).post(receive))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        // Covers the body upload too: the webhook handler reads the body itself.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state)
}

/// Connection limits for [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// How long shutdown waits for requests in progress before closing their connections.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` (HTTP/1.1) until `shutdown` resolves, then stops accepting,
/// lets requests in progress finish for at most `shutdown_grace`, and closes the rest.
///
/// A connection slot is taken *before* `accept`: over `max_connections`, new connections wait
/// in the kernel's accept queue (bounded by the listen backlog) rather than costing a task and
/// a descriptor here, and they are served in order as slots free up. Closing them instead
/// would turn a burst of idle connections into failed deliveries for Meta; waiting is cheap
/// because `header_timeout` frees the slot of an idle or trickling client within seconds.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let slots = Arc::new(Semaphore::new(opts.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut conns = tokio::task::JoinSet::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let next = async {
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the slot semaphore is never closed");
            (permit, listener.accept().await)
        };
        let (permit, accepted) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            next = next => next,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning; the
                // connections already open keep being served.
                tracing::warn!(error = %e, "accepting a connection failed");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| app.clone().oneshot(req));
        let conn = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
        let metrics = metrics.clone();
        conns.spawn(async move {
            if let Err(e) = conn.await {
                // Clients that vanish or stall are routine on the internet, not our errors.
                if e.is_timeout() {
                    Metrics::inc(&metrics.http_header_timeouts);
                }
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(open_connections = open, "no longer accepting connections");
    if tokio::time::timeout(opts.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open_connections = conns.len(),
            grace_secs = opts.shutdown_grace.as_secs_f32(),
            "requests still in progress after the shutdown grace period; closing their connections (Meta retries unanswered webhooks)"
        );
    }
    conns.shutdown().await;
}

/// Meta's subscription handshake: echo `hub.challenge` when the verify token matches.
async fn verify(State(st): State<HttpState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mode = q.get("hub.mode").map(String::as_str);
    let token = q
        .get("hub.verify_token")
        .map(String::as_bytes)
        .unwrap_or_default();
    let expected = st.verify_token.expose_secret().as_bytes();
    let token_ok = !expected.is_empty() && constant_time_eq(token, expected);
    match (mode, q.get("hub.challenge")) {
        (Some("subscribe"), Some(challenge)) if token_ok => {
            tracing::info!("webhook subscription verified");
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain")],
                challenge.clone(),
            )
                .into_response()
        }
        _ => {
            tracing::warn!(mode = ?mode, "webhook verification refused (mode or verify token wrong)");
            (StatusCode::FORBIDDEN, "verification failed\n").into_response()
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // HMAC both sides with a per-process key so the comparison time is independent of content.
    let key = b"sandra-verify-token-compare";
    let mac = |d: &[u8]| {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key size");
        m.update(d);
        m.finalize().into_bytes()
    };
    let (x, y) = (mac(a), mac(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` over the raw body.
pub fn signature_valid(secret: &[u8], body: &[u8], header_value: Option<&str>) -> bool {
    signature_valid_within(secret, body, header_value, usize::MAX)
}

/// [`signature_valid`], trying the re-escaped form of a body (see below) only when that form
/// is at most `max_escaped_bytes` long: Meta sent the escaped form, so a longer one was never
/// a body Sandra would have accepted, and the rebuild costs up to 3x the body in memory and
/// hashing.
pub fn signature_valid_within(
    secret: &[u8],
    body: &[u8],
    header_value: Option<&str>,
    max_escaped_bytes: usize,
) -> bool {
    let Some(hex_sig) = header_value.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    if hex_sig.len() != 64 {
        return false;
    }
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    if secret.is_empty() {
        return false;
    }
    let check = |data: &[u8]| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key size");
        mac.update(data);
        mac.verify_slice(&sig).is_ok()
    };
    if check(body) {
        return true;
    }
    // Meta signs the \uXXXX-escaped form. If a proxy un-escaped non-ASCII text on the way, the
    // escaped form can be rebuilt exactly (UTF-16 code units, lowercase hex).
    if body.iter().any(|b| *b >= 0x80)
        && let Ok(text) = std::str::from_utf8(body)
    {
        let escaped_len: usize = text
            .chars()
            .map(|c| if c.is_ascii() { 1 } else { 6 * c.len_utf16() })
            .sum();
        if escaped_len > max_escaped_bytes {
            return false;
        }
        let mut escaped = String::with_capacity(escaped_len);
        for ch in text.chars() {
            if ch.is_ascii() {
                escaped.push(ch);
            } else {
                let mut units = [0u16; 2];
                for u in ch.encode_utf16(&mut units) {
                    use std::fmt::Write;
                    let _ = write!(escaped, "\\u{u:04x}");
                }
            }
        }
        return check(escaped.as_bytes());
    }
    false
}

/// Bodies larger than this are hashed on the blocking pool: a 3 MiB body (and its re-escaped
/// copy) takes milliseconds of CPU, which would stall every other request on that runtime
/// thread.
const HASH_INLINE_MAX: usize = 64 * 1024;

async fn signature_ok(st: &HttpState, body: &Bytes, header_value: Option<&str>) -> bool {
    let max = st.max_body_bytes;
    if body.len() <= HASH_INLINE_MAX {
        return signature_valid_within(
            st.app_secret.expose_secret().as_bytes(),
            body,
            header_value,
            max,
        );
    }
    let (secret, body, sig) = (
        st.app_secret.clone(),
        body.clone(),
        header_value.map(str::to_owned),
    );
    tokio::task::spawn_blocking(move || {
        signature_valid_within(
            secret.expose_secret().as_bytes(),
            &body,
            sig.as_deref(),
            max,
        )
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "signature check task failed");
        false
    })
}

async fn receive(State(st): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let Ok(_permit) = st.admission.try_acquire() else {
        Metrics::inc(&st.metrics.webhooks_overloaded);
        tracing::warn!("webhook shed: too many in flight (Meta will retry)");
        return (StatusCode::SERVICE_UNAVAILABLE, "overloaded\n").into_response();
    };
    // A stalled upload is cut off by the router's request timeout (408), which also drops
    // this permit.
    let body = match Limited::new(body, st.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Metrics::inc(&st.metrics.webhooks_too_large);
            tracing::warn!(
                max_body_bytes = st.max_body_bytes,
                "webhook refused: body too large"
            );
            return (StatusCode::PAYLOAD_TOO_LARGE, "body too large\n").into_response();
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading a webhook body failed");
            return (StatusCode::BAD_REQUEST, "could not read the body\n").into_response();
        }
    };
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if !signature_ok(&st, &body, sig).await {
        Metrics::inc(&st.metrics.webhooks_bad_signature);
        if st.app_secret.expose_secret().is_empty() {
            tracing::warn!("webhook refused: whatsapp.app_secret is not configured");
        } else {
            tracing::warn!(has_header = sig.is_some(), "webhook refused: bad signature");
        }
        return (StatusCode::UNAUTHORIZED, "invalid signature\n").into_response();
    }
    let store = st.system.store.clone();
    let ours = (!st.phone_number_id.is_empty()).then_some(st.phone_number_id.as_str());
    let batch = match sandra_actors::whatsapp::parse_webhook_for(&body, ours) {
        Ok(b) => b,
        Err(e) => {
            // Signed by Meta but unusable: keep it for a human, and do not make Meta retry.
            Metrics::inc(&st.metrics.webhooks_not_json);
            tracing::warn!(error = %e, "signed webhook body is not JSON; kept in dead-letter");
            let kept = store.dead_letter(&body, &e.to_string());
            return match kept {
                Ok(_) => match store.sync().await {
                    Ok(()) => ok(&st),
                    Err(e) => store_error(&st, e),
                },
                Err(e) => store_error(&st, e),
            };
        }
    };
    if !batch.other_numbers.is_empty() {
        // Genuine (signed) but for another number of the same business account: answering
        // from ours would be wrong, and a non-200 would make Meta retry for a week.
        let items: usize = batch.other_numbers.iter().map(|(_, n)| n).sum();
        Metrics::inc(&st.metrics.webhooks_other_number);
        Metrics::add(&st.metrics.items_other_number, items as u64);
        let numbers: Vec<&str> = batch
            .other_numbers
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        tracing::info!(
            ?numbers,
            items,
            "webhook items for another business number ignored"
        );
    }
    for why in &batch.ignored {
        tracing::info!(item = %why, "webhook item accepted and ignored");
    }
    Metrics::add(&st.metrics.items_ignored, batch.ignored.len() as u64);
    let accepted = match store.accept(&batch, now_ms()) {
        Ok(a) => a,
        Err(e) => return store_error(&st, e),
    };
    if let Err(e) = store.sync().await {
        return store_error(&st, e);
    }
    let m = &st.metrics;
    Metrics::add(&m.messages_accepted, accepted.new_messages.len() as u64);
    Metrics::add(&m.messages_duplicate, accepted.duplicate_messages as u64);
    Metrics::add(&m.statuses_applied, accepted.statuses_applied as u64);
    Metrics::add(&m.statuses_duplicate, accepted.duplicate_statuses as u64);
    Metrics::add(&m.statuses_unmatched, accepted.statuses_unmatched as u64);
    for key in &accepted.windows_closed {
        tracing::info!(%key, "Meta closed the 24-hour window (131047)");
    }
    if !accepted.new_messages.is_empty() || !accepted.redelivered.is_empty() {
        match st.system.router.try_get() {
            Some(router) => {
                for rec in accepted
                    .new_messages
                    .into_iter()
                    .chain(accepted.redelivered)
                {
                    tracing::debug!(wamid = %rec.message.wamid, key = %rec.key, "routing");
                    // If the router is restarting, the message is durable in the inbox and
                    // the new router replays it.
                    let _ = router.cast(RouterMsg::Route(Box::new(rec)));
                }
            }
            None => tracing::warn!("router not running; messages wait in the inbox"),
        }
    }
    ok(&st)
}

fn ok(st: &HttpState) -> Response {
    Metrics::inc(&st.metrics.webhooks_accepted);
    (StatusCode::OK, "ok\n").into_response()
}

fn store_error(st: &HttpState, e: sandra_actors::store::StoreError) -> Response {
    Metrics::inc(&st.metrics.webhooks_store_errors);
    tracing::error!(error = %e, "storing a webhook failed; answering 500 so Meta retries");
    (StatusCode::INTERNAL_SERVER_ERROR, "storage error\n").into_response()
}

async fn ready(State(st): State<HttpState>) -> Response {
    let mut problems: Vec<String> = st
        .missing_settings
        .iter()
        .map(|m| format!("{m} is not set"))
        .collect();
    if !st.system.store.healthy() {
        problems.push("storage is not answering".into());
    }
    if !st.system.actors_up() {
        problems.push("actors are not running".into());
    }
    if st
        .system
        .sender_health
        .token_invalid
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        problems.push("the WhatsApp access token is invalid or expired (error 190)".into());
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
            .into_response()
    }
}

async fn metrics(State(st): State<HttpState>) -> Response {
    let mut body = st.metrics.render();
    body.push_str(&format!(
        "# HELP sandra_outbox_pending messages waiting to be sent\nsandra_outbox_pending {}\n\
         # HELP sandra_dead_letters bodies and messages kept in dead-letter\nsandra_dead_letters {}\n",
        st.system.store.outbox_pending_count(),
        st.system.store.dead_letter_count()
    ));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(secret: &[u8], body: &[u8]) -> String {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
        m.update(body);
        format!("sha256={}", hex::encode(m.finalize().into_bytes()))
    }

    #[test]
    fn published_vectors_verify() {
        let s = b"test-app-secret";
        let v = |b: &[u8], h: &str| signature_valid(s, b, Some(&format!("sha256={h}")));
        assert!(v(
            br#"{"object":"whatsapp_business_account"}"#,
            "b6978b21c4467654c466607663db9b43fae44b71083568df403e0a077089208e"
        ));
        assert!(v(
            br#"{"message":"caf\u00e9"}"#,
            "5980113abfc4ffe911f1ae78f92dcf41e10b7d6bc792efd48dfe9ee94131aaf4"
        ));
        assert!(v(
            br#"{"message":"\ud83c\udf55"}"#,
            "a3fe6b4ad5e3ef4df08e3dd66f4ed304d3ad5b34bb9da8f1da445acc6088a507"
        ));
        // A proxy that un-escaped the body: still verifies against Meta's escaped signature.
        assert!(v(
            "{\"message\":\"café\"}".as_bytes(),
            "5980113abfc4ffe911f1ae78f92dcf41e10b7d6bc792efd48dfe9ee94131aaf4"
        ));
    }

    #[test]
    fn wrong_missing_or_malformed_signatures_fail() {
        let body = b"{}";
        let good = sig(b"k", body);
        assert!(signature_valid(b"k", body, Some(&good)));
        assert!(!signature_valid(b"other", body, Some(&good)));
        assert!(!signature_valid(b"k", b"{ }", Some(&good)));
        assert!(!signature_valid(b"k", body, None));
        assert!(!signature_valid(b"k", body, Some(&good[7..])));
        assert!(!signature_valid(b"k", body, Some("sha256=zz")));
        assert!(!signature_valid(b"", body, Some(&sig(b"", body))));
    }
}
