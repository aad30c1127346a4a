//! A loopback stand-in for Meta's Graph API, faithful to the fact sheet: Meta's success and
//! error envelopes, bearer-token checks (190 on a wrong token), `Retry-After`, two-hop media
//! downloads that need the bearer token on both hops, `400 / code 100 / subcode 33` for unknown
//! media ids, and scripted faults (error codes with either HTTP status, hangs for timeouts).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// One scripted answer to the next send.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Meta's error envelope with this HTTP status and code (and optional `Retry-After` s).
    Error {
        http: u16,
        code: i64,
        retry_after: Option<u64>,
    },
    /// Never answer within the client's timeout (the send is *not* recorded as accepted).
    Hang(Duration),
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub body: Value,
    /// Whether the fake accepted it (answered with a wamid).
    pub accepted: bool,
}

#[derive(Default)]
struct Inner {
    token: String,
    sends: Vec<Received>,
    reads: Vec<Received>,
    faults: VecDeque<Fault>,
    media: HashMap<String, (String, Vec<u8>)>,
    media_calls: Vec<String>,
    next_id: u64,
}

#[derive(Clone)]
pub struct FakeGraph {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakeGraph {
    pub async fn start(token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_string(),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/{version}/{pnid}/messages", post(messages))
            .route("/{version}/{media_id}", get(media_info))
            .route("/lookaside/{media_id}", get(media_bytes))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues faults answered to the next sends, in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.lock().unwrap().faults.extend(faults);
    }

    /// Accepts only `token` from now on (a rotated access token); the old one gets 190.
    pub fn set_token(&self, token: &str) {
        self.inner.lock().unwrap().token = token.to_string();
    }

    pub fn add_media(&self, id: &str, mime: &str, bytes: Vec<u8>) {
        self.inner
            .lock()
            .unwrap()
            .media
            .insert(id.to_string(), (mime.to_string(), bytes));
    }

    /// Media requests seen: `info:<id>` for hop 1, `bytes:<id>` for hop 2 (with a valid token).
    pub fn media_calls(&self) -> Vec<String> {
        self.inner.lock().unwrap().media_calls.clone()
    }

    pub fn clear_faults(&self) {
        self.inner.lock().unwrap().faults.clear();
    }

    /// Every message send received (accepted or not).
    pub fn sends(&self) -> Vec<Received> {
        self.inner.lock().unwrap().sends.clone()
    }

    /// Message sends the fake accepted.
    pub fn accepted(&self) -> Vec<Received> {
        self.sends().into_iter().filter(|r| r.accepted).collect()
    }

    /// Mark-as-read / typing-indicator calls received.
    pub fn reads(&self) -> Vec<Received> {
        self.inner.lock().unwrap().reads.clone()
    }

    /// Waits until at least `n` sends were accepted; returns them.
    pub async fn wait_accepted(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.accepted();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn envelope(code: i64, message: &str, subcode: Option<i64>) -> Value {
    let mut e = json!({"error": {
        "message": format!("({code}) {message}"),
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": message},
        "fbtrace_id": "AFakeTraceId"
    }});
    if let Some(s) = subcode {
        e["error"]["error_subcode"] = json!(s);
    }
    e
}

fn bearer_ok(inner: &Inner, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == inner.token)
}

fn token_error() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(envelope(
            190,
            "Error validating access token: Session has expired",
            Some(463),
        )),
    )
        .into_response()
}

async fn messages(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((_version, _pnid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(envelope(100, "Invalid parameter", None)),
            )
                .into_response();
        }
    };
    let is_read = body.get("status").and_then(Value::as_str) == Some("read");
    let fault = {
        let mut g = inner.lock().unwrap();
        if !bearer_ok(&g, &headers) {
            let rec = Received {
                at,
                body,
                accepted: false,
            };
            if is_read {
                g.reads.push(rec)
            } else {
                g.sends.push(rec)
            }
            return token_error();
        }
        if is_read {
            g.reads.push(Received {
                at,
                body,
                accepted: true,
            });
            return axum::Json(json!({"success": true})).into_response();
        }
        g.faults.pop_front()
    };
    match fault {
        Some(Fault::Error {
            http,
            code,
            retry_after,
        }) => {
            inner.lock().unwrap().sends.push(Received {
                at,
                body,
                accepted: false,
            });
            let mut resp = (
                StatusCode::from_u16(http).unwrap(),
                axum::Json(envelope(code, "Injected failure", None)),
            )
                .into_response();
            if let Some(s) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
            }
            resp
        }
        Some(Fault::Hang(d)) => {
            inner.lock().unwrap().sends.push(Received {
                at,
                body,
                accepted: false,
            });
            tokio::time::sleep(d).await;
            (StatusCode::GATEWAY_TIMEOUT, "late").into_response()
        }
        None => {
            let mut g = inner.lock().unwrap();
            g.next_id += 1;
            let wamid = format!("wamid.FAKE{:06}", g.next_id);
            let to = body.get("to").cloned().unwrap_or(Value::Null);
            g.sends.push(Received {
                at,
                body,
                accepted: true,
            });
            axum::Json(json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": wamid, "message_status": "accepted"}]
            }))
            .into_response()
        }
    }
}

async fn media_info(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((_version, media_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut g = inner.lock().unwrap();
    if !bearer_ok(&g, &headers) {
        return token_error();
    }
    g.media_calls.push(format!("info:{media_id}"));
    let Some((mime, bytes)) = g.media.get(&media_id) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(envelope(
                100,
                "Unsupported get request. Object does not exist",
                Some(33),
            )),
        )
            .into_response();
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    axum::Json(json!({
        "messaging_product": "whatsapp",
        "url": format!("http://{host}/lookaside/{media_id}"),
        "mime_type": mime,
        "sha256": "opaque",
        "file_size": bytes.len(),
        "id": media_id
    }))
    .into_response()
}

async fn media_bytes(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(media_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut g = inner.lock().unwrap();
    if !bearer_ok(&g, &headers) {
        return (StatusCode::UNAUTHORIZED, "unauthorized").into_response();
    }
    g.media_calls.push(format!("bytes:{media_id}"));
    match g.media.get(&media_id) {
        Some((mime, bytes)) => {
            ([(header::CONTENT_TYPE, mime.clone())], bytes.clone()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
