//! HTTP: Meta's webhook endpoint, health and metrics, and the listener that serves them. The
//! only module that knows routes.
//!
//! The webhook POST path is: admission permit → raw bytes (at most `max_body_bytes`) →
//! [`System::ingest`] (signature, parse, durable accept, routing: `sandra_actors::ingest`) →
//! 200, 401 or 500. It never waits for a model; admission control sheds load with 503 (Meta
//! retries) because actor mailboxes are unbounded. The permit is taken before the body is read,
//! so a shed request costs no buffer. Every webhook POST answered, whatever its status, is timed
//! in `sandra_webhook_ack_seconds`.
//!
//! [`serve`] bounds what a client can hold: a connection slot (`max_connections`), the time to
//! send a request head (`header_timeout`) and the time to get an answer, body upload included
//! (`request_timeout`, 408).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sandra_actors::System;
use sandra_actors::ingest::IngestError;
use sandra_actors::metrics::Metrics;
use sandra_actors::secret::{ExposeSecret, Live, SecretString};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::timeout::TimeoutLayer;

/// Shared state of the HTTP layer.
#[derive(Clone)]
pub struct HttpState {
    /// Ingestion, health and metrics (the app secret and our business number live in its
    /// ingest service).
    pub system: System,
    /// Live: the Admin Portal and SIGHUP change it.
    pub verify_token: Live<SecretString>,
    pub admission: Arc<Semaphore>,
    /// Largest webhook body read, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Settings Sandra cannot talk to Meta without (`Config::missing_whatsapp_settings`),
    /// reported by `/readyz`.
    pub missing_settings: Vec<&'static str>,
    /// The Admin Portal, mounted under `/admin`.
    pub admin: crate::admin::Admin,
}

pub const WEBHOOK_PATH: &str = "/api/channels/whatsapp";

pub fn router(state: HttpState, request_timeout: Duration) -> Router {
    let metrics = state.system.metrics().clone();
    // The portal's chat box waits for a whole turn (the playground's own bound, longer than a
    // webhook ever should take): its routes get that much on top of `request_timeout`.
    let admin = crate::admin::routes(state.admin.clone()).layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        request_timeout + state.system.playground().timeout(),
    ));
    Router::new()
        .route(WEBHOOK_PATH, get(verify).post(receive))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        // Covers the body upload too: the webhook handler reads the body itself.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // After the layer above, so that only the portal's own timeout applies to it.
        .nest("/admin", admin)
        // Outside the timeout, so that 408s are timed too.
        .layer(axum::middleware::from_fn_with_state(metrics, time_webhook))
        .with_state(state)
}

/// Times every webhook POST from the moment hyper hands it over (its head read: the closest
/// point to its first byte that the server sees) to its response, whatever the status.
async fn time_webhook(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || req.uri().path() != WEBHOOK_PATH {
        return next.run(req).await;
    }
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    metrics
        .webhook_ack_seconds
        .record(started.elapsed().as_secs_f64());
    response
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
        // The peer address, for the Admin Portal's per-client login limit.
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(req)
        });
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
    let expected = st.verify_token.get();
    let expected = expected.expose_secret().as_bytes();
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

async fn receive(State(st): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let metrics = st.system.metrics();
    let Ok(_permit) = st.admission.try_acquire() else {
        Metrics::inc(&metrics.webhooks_overloaded);
        tracing::warn!("webhook shed: too many in flight (Meta will retry)");
        return (StatusCode::SERVICE_UNAVAILABLE, "overloaded\n").into_response();
    };
    // A stalled upload is cut off by the router's request timeout (408), which also drops
    // this permit.
    let body = match Limited::new(body, st.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Metrics::inc(&metrics.webhooks_too_large);
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
    match st.system.ingest(body, sig).await {
        Ok(_) => {
            st.admin.note_webhook();
            (StatusCode::OK, "ok\n").into_response()
        }
        Err(IngestError::BadSignature {
            secret_configured,
            had_header,
        }) => {
            if secret_configured {
                tracing::warn!(has_header = had_header, "webhook refused: bad signature");
            } else {
                tracing::warn!("webhook refused: whatsapp.app_secret is not configured");
            }
            (StatusCode::UNAUTHORIZED, "invalid signature\n").into_response()
        }
        Err(IngestError::Store(e)) => {
            tracing::error!(error = %e, "storing a webhook failed; answering 500 so Meta retries");
            (StatusCode::INTERNAL_SERVER_ERROR, "storage error\n").into_response()
        }
    }
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
    if st.system.token_invalid() {
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

async fn metrics_text(State(st): State<HttpState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.system.render_metrics(),
    )
        .into_response()
}
