//! A loopback stand-in for Meta's Graph API, faithful to the fact sheet: Meta's success and
//! error envelopes, bearer-token checks (190 on a wrong token), `Retry-After`, two-hop media
//! downloads that need the bearer token on both hops, `400 / code 100 / subcode 33` for unknown
//! media ids, and scripted faults (error codes with either HTTP status, hangs for timeouts,
//! connections closed without an answer), in order or for sends whose text matches. Media
//! upload (`POST /{phone-number-id}/media`) takes multipart forms as Meta does (the
//! `messaging_product`, `type` and `file` fields, bearer token, Meta's error envelope, audio
//! only as Ogg with Opus inside, 16 MB at most), and an audio message must name an uploaded id.
//!
//! Like Meta, it can also POST a signed `statuses: sent` webhook (echoing
//! `biz_opaque_callback_data`) back to Sandra for every send it accepted, a little later, and
//! keeps re-delivering it until Sandra answers 200 (Meta retries webhooks for days). That is what
//! lets Sandra reconcile a send whose answer it never recorded; it is off by default.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
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
    /// Close the connection without answering (the send is *not* recorded as accepted): what
    /// a reset or a load balancer dropping the request looks like to the client.
    Drop,
    /// Accept the send (it counts as delivered, and its status webhook follows) but close the
    /// connection before answering: Meta took it, the client cannot know.
    DropAfterAccept,
    /// Answer this send normally: interleaves successes with faults in a queue.
    Pass,
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
    /// Faults answered to every send whose text contains the needle, before the queue.
    rules: Vec<(String, Fault)>,
    media: HashMap<String, (String, Vec<u8>)>,
    /// What hop 1 says about a media id instead of the truth (a lying or compromised upstream).
    media_lies: HashMap<String, MediaLie>,
    media_calls: Vec<String>,
    next_id: u64,
    statuses: StatusHook,
    /// `GET /{phone-number-id}` answers, by id.
    phone_numbers: HashMap<String, Value>,
    /// `GET /{waba-id}/subscribed_apps`: the apps subscribed to each business account.
    subscribed_apps: HashMap<String, Vec<String>>,
    /// Approved templates (name, language code); any other template send gets 132001.
    templates: Vec<(String, String)>,
    /// Files uploaded through `POST /{phone-number-id}/media`, in order.
    uploads: Vec<Upload>,
    /// Faults answered to the next uploads, in order.
    upload_faults: VecDeque<Fault>,
}

/// A file uploaded to the fake's media store.
#[derive(Clone, Debug)]
pub struct Upload {
    pub id: String,
    /// The form's `type` field.
    pub kind: String,
    /// The file part's own `Content-Type`.
    pub content_type: String,
    pub filename: String,
    pub bytes: Vec<u8>,
}

/// A hop-1 answer that does not match the bytes: each `Some` replaces the true value.
#[derive(Clone, Debug, Default)]
pub struct MediaLie {
    pub file_size: Option<u64>,
    pub mime_type: Option<String>,
    /// The download URL of hop 2 (e.g. another origin, to check the token is not sent there).
    pub url: Option<String>,
    /// Answer hop 1 only after this long (a slow Graph API).
    pub delay: Option<Duration>,
}

/// Status webhooks the fake posts back, as Meta does, once configured.
#[derive(Default)]
struct StatusHook {
    /// `None`: no status webhooks at all (the default).
    delay: Option<Duration>,
    /// Where Sandra currently listens; `None` while it is down (deliveries wait and retry).
    url: Option<String>,
    /// Accepted sends whose status webhook has not been answered 200 yet.
    outstanding: usize,
    /// Status webhooks Sandra answered 200.
    delivered: usize,
    /// Status webhooks abandoned after [`STATUS_GIVE_UP`].
    abandoned: usize,
    /// When Sandra took each status webhook, by the `biz_opaque_callback_data` it echoed.
    delivered_at: Vec<(String, Instant)>,
}

/// How long the fake keeps re-delivering one status webhook before giving up.
const STATUS_GIVE_UP: Duration = Duration::from_secs(300);

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
        // The test business number, as Meta describes it.
        inner.lock().unwrap().phone_numbers.insert(
            super::PHONE_NUMBER_ID.into(),
            json!({
                "verified_name": "Sandra Test",
                "code_verification_status": "VERIFIED",
                "display_phone_number": "+1 555-078-3881",
                "quality_rating": "GREEN",
                "platform_type": "CLOUD_API",
                "throughput": {"level": "STANDARD"},
                "id": super::PHONE_NUMBER_ID
            }),
        );
        let app = Router::new()
            .route("/{version}/{pnid}/messages", post(messages))
            .route("/{version}/{pnid}/media", post(upload_media))
            .route("/{version}/{pnid}/subscribed_apps", get(subscribed_apps))
            .route("/{version}/{media_id}", get(media_info))
            .route("/lookaside/{media_id}", get(media_bytes))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = KillableListener(listener);
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<ConnHandle>(),
            )
            .await
            .unwrap()
        });
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

    /// Makes hop 1 describe media `id` with `lie` instead of the truth.
    pub fn lie_about_media(&self, id: &str, lie: MediaLie) {
        self.inner
            .lock()
            .unwrap()
            .media_lies
            .insert(id.to_string(), lie);
    }

    /// Media requests seen: `info:<id>` for hop 1, `bytes:<id>` for hop 2 (with a valid token).
    pub fn media_calls(&self) -> Vec<String> {
        self.inner.lock().unwrap().media_calls.clone()
    }

    /// Subscribes apps (by name) to business account `waba` (none: unsubscribed).
    pub fn set_subscribed_apps(&self, waba: &str, apps: &[&str]) {
        self.inner.lock().unwrap().subscribed_apps.insert(
            waba.to_string(),
            apps.iter().map(|a| a.to_string()).collect(),
        );
    }

    /// Approves a template, so that sends of it are accepted.
    pub fn approve_template(&self, name: &str, language: &str) {
        self.inner
            .lock()
            .unwrap()
            .templates
            .push((name.into(), language.into()));
    }

    /// Changes what `GET /{phone-number-id}` says about the test number.
    pub fn set_phone_number_field(&self, field: &str, value: &str) {
        let mut g = self.inner.lock().unwrap();
        if let Some(v) = g.phone_numbers.get_mut(super::PHONE_NUMBER_ID) {
            v[field] = json!(value);
        }
    }

    pub fn clear_faults(&self) {
        let mut g = self.inner.lock().unwrap();
        g.faults.clear();
        g.rules.clear();
    }

    /// Faults still queued (not yet answered to a send).
    pub fn faults_left(&self) -> usize {
        self.inner.lock().unwrap().faults.len()
    }

    /// Answers `fault` to every send whose text contains `needle` (until `clear_faults`).
    pub fn fail_matching(&self, needle: &str, fault: Fault) {
        self.inner
            .lock()
            .unwrap()
            .rules
            .push((needle.to_string(), fault));
    }

    pub fn token(&self) -> String {
        self.inner.lock().unwrap().token.clone()
    }

    /// Posts a signed `sent` status webhook for every accepted send, `delay` after accepting it,
    /// to the URL set with [`FakeGraph::set_webhook_url`].
    pub fn send_status_webhooks(&self, delay: Duration) {
        self.inner.lock().unwrap().statuses.delay = Some(delay);
    }

    /// Where Sandra's webhook endpoint is now (`None` while it is down): status webhooks wait
    /// and are re-delivered to wherever it is when they are retried.
    pub fn set_webhook_url(&self, url: Option<String>) {
        self.inner.lock().unwrap().statuses.url = url;
    }

    /// When Sandra answered 200 to a status webhook echoing `callback` (the first time).
    pub fn status_delivered_at(&self, callback: &str) -> Option<Instant> {
        let g = self.inner.lock().unwrap();
        g.statuses
            .delivered_at
            .iter()
            .find(|(c, _)| c == callback)
            .map(|(_, t)| *t)
    }

    /// (delivered, outstanding, abandoned) status webhooks.
    pub fn status_webhooks(&self) -> (usize, usize, usize) {
        let g = self.inner.lock().unwrap();
        (
            g.statuses.delivered,
            g.statuses.outstanding,
            g.statuses.abandoned,
        )
    }

    /// Queues faults answered to the next media uploads, in order (`Fault::Error` and
    /// `Fault::Pass` only).
    pub fn inject_upload(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.lock().unwrap().upload_faults.extend(faults);
    }

    /// Files uploaded and accepted, in order.
    pub fn uploads(&self) -> Vec<Upload> {
        self.inner.lock().unwrap().uploads.clone()
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
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    Path((_version, pnid)): Path<(String, String)>,
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
        if body["type"] == "template" {
            let t = &body["template"];
            let wanted = (
                t["name"].as_str().unwrap_or_default().to_string(),
                t["language"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            if !g.templates.contains(&wanted) {
                g.sends.push(Received {
                    at,
                    body,
                    accepted: false,
                });
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(envelope(
                        132001,
                        "Template name does not exist in the translation",
                        None,
                    )),
                )
                    .into_response();
            }
        }
        if body["type"] == "audio" {
            let id = body["audio"]["id"].as_str().unwrap_or_default();
            if !g.uploads.iter().any(|u| u.id == id) {
                g.sends.push(Received {
                    at,
                    body,
                    accepted: false,
                });
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(envelope(131053, "Media upload error", None)),
                )
                    .into_response();
            }
        }
        let text = body["text"]["body"].as_str().unwrap_or_default();
        let rule = g
            .rules
            .iter()
            .find(|(needle, _)| text.contains(needle.as_str()))
            .map(|(_, f)| f.clone());
        rule.or_else(|| g.faults.pop_front())
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
        Some(Fault::Drop) => {
            inner.lock().unwrap().sends.push(Received {
                at,
                body,
                accepted: false,
            });
            // The connection is dead before hyper writes this: the client gets no answer.
            conn.kill();
            (StatusCode::INTERNAL_SERVER_ERROR, "never seen").into_response()
        }
        f @ (None | Some(Fault::Pass | Fault::DropAfterAccept)) => {
            let mut g = inner.lock().unwrap();
            g.next_id += 1;
            let wamid = format!("wamid.FAKE{:06}", g.next_id);
            let to = body.get("to").cloned().unwrap_or(Value::Null);
            if let Some(delay) = g.statuses.delay {
                g.statuses.outstanding += 1;
                let status = status_sent(&pnid, &wamid, &body);
                let callback = body["biz_opaque_callback_data"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                tokio::spawn(deliver_status(inner.clone(), delay, status, callback));
            }
            g.sends.push(Received {
                at,
                body,
                accepted: true,
            });
            if matches!(f, Some(Fault::DropAfterAccept)) {
                conn.kill();
            }
            axum::Json(json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": wamid, "message_status": "accepted"}]
            }))
            .into_response()
        }
    }
}

/// Meta's limit for audio files.
const MAX_AUDIO_BYTES: usize = 16 * 1024 * 1024;

fn bad_request(code: i64, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(envelope(code, message, None)),
    )
        .into_response()
}

/// `POST /{phone-number-id}/media`: a multipart form with `messaging_product=whatsapp`, `type`
/// (the MIME type) and `file`; answers `{"id": ...}`.
async fn upload_media(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    multipart: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    {
        let g = inner.lock().unwrap();
        if !bearer_ok(&g, &headers) {
            return token_error();
        }
    }
    let Ok(mut form) = multipart else {
        return bad_request(100, "(#100) The request must be multipart/form-data");
    };
    let (mut product, mut kind, mut file) = (None, None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return bad_request(100, "(#100) Malformed multipart body"),
        };
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().unwrap_or_default().to_string();
        let content_type = field.content_type().unwrap_or_default().to_string();
        let Ok(data) = field.bytes().await else {
            return bad_request(100, "(#100) Malformed multipart body");
        };
        match name.as_str() {
            "messaging_product" => product = Some(String::from_utf8_lossy(&data).into_owned()),
            "type" => kind = Some(String::from_utf8_lossy(&data).into_owned()),
            "file" => file = Some((filename, content_type, data.to_vec())),
            _ => {}
        }
    }
    if product.as_deref() != Some("whatsapp") {
        return bad_request(100, "(#100) The parameter messaging_product is required.");
    }
    let Some(kind) = kind else {
        return bad_request(100, "(#100) The parameter type is required.");
    };
    let Some((filename, content_type, bytes)) = file else {
        return bad_request(100, "(#100) The parameter file is required.");
    };
    if kind.starts_with("audio/") {
        // "audio/ogg (OPUS codecs only)": an Ogg stream whose first packet is an OpusHead.
        let opus = bytes.starts_with(b"OggS") && bytes.get(28..36) == Some(b"OpusHead".as_slice());
        if kind != "audio/ogg" || !opus || bytes.len() > MAX_AUDIO_BYTES {
            return bad_request(131053, "Media upload error");
        }
    }
    let fault = inner.lock().unwrap().upload_faults.pop_front();
    if let Some(Fault::Error {
        http,
        code,
        retry_after,
    }) = fault
    {
        let mut resp = (
            StatusCode::from_u16(http).unwrap(),
            axum::Json(envelope(code, "Injected upload failure", None)),
        )
            .into_response();
        if let Some(s) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
        }
        return resp;
    }
    let mut g = inner.lock().unwrap();
    g.next_id += 1;
    let id = format!("{}", 900_000_000 + g.next_id);
    g.uploads.push(Upload {
        id: id.clone(),
        kind,
        content_type,
        filename,
        bytes,
    });
    axum::Json(json!({ "id": id })).into_response()
}

/// Meta answers an unknown or inaccessible object id with 400, code 100, subcode 33.
fn unknown_object() -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(envelope(
            100,
            "Unsupported get request. Object does not exist, cannot be loaded due to missing permissions, or does not support this operation",
            Some(33),
        )),
    )
        .into_response()
}

/// `GET /{waba-id}/subscribed_apps`: `{"data": [{"whatsapp_business_api_data": {...}}]}`.
async fn subscribed_apps(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((_version, waba)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let g = inner.lock().unwrap();
    if !bearer_ok(&g, &headers) {
        return token_error();
    }
    let Some(apps) = g.subscribed_apps.get(&waba) else {
        return unknown_object();
    };
    let data: Vec<Value> = apps
        .iter()
        .enumerate()
        .map(|(i, name)| {
            json!({"whatsapp_business_api_data": {
                "link": format!("https://www.facebook.com/games/?app_id={}", 6708400 + i),
                "name": name,
                "id": format!("{}", 6708400 + i)
            }})
        })
        .collect();
    axum::Json(json!({ "data": data })).into_response()
}

async fn media_info(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((_version, media_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    // The same path shape serves phone numbers (`GET /{phone-number-id}`), as at Meta.
    {
        let g = inner.lock().unwrap();
        if let Some(number) = g.phone_numbers.get(&media_id) {
            if !bearer_ok(&g, &headers) {
                return token_error();
            }
            return axum::Json(number.clone()).into_response();
        }
    }
    let (answer, delay) = match media_answer(&inner, &media_id, &headers) {
        Ok(a) => a,
        Err(refusal) => return *refusal,
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    axum::Json(answer).into_response()
}

/// Hop 1's answer for `media_id` (and how long to wait before giving it), or its refusal.
fn media_answer(
    inner: &Mutex<Inner>,
    media_id: &str,
    headers: &HeaderMap,
) -> Result<(Value, Option<Duration>), Box<Response>> {
    let mut g = inner.lock().unwrap();
    if !bearer_ok(&g, headers) {
        return Err(Box::new(token_error()));
    }
    g.media_calls.push(format!("info:{media_id}"));
    let Some((mime, bytes)) = g.media.get(media_id) else {
        return Err(Box::new(
            (
                StatusCode::BAD_REQUEST,
                axum::Json(envelope(
                    100,
                    "Unsupported get request. Object does not exist",
                    Some(33),
                )),
            )
                .into_response(),
        ));
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let lie = g.media_lies.get(media_id).cloned().unwrap_or_default();
    let answer = json!({
        "messaging_product": "whatsapp",
        "url": lie.url.unwrap_or_else(|| format!("http://{host}/lookaside/{media_id}")),
        "mime_type": lie.mime_type.unwrap_or_else(|| mime.clone()),
        "sha256": "opaque",
        "file_size": lie.file_size.unwrap_or(bytes.len() as u64),
        "id": media_id
    });
    Ok((answer, lie.delay))
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

/// Meta's `sent` status webhook for a message it accepted (shape of the `status_sent` fixture).
fn status_sent(pnid: &str, wamid: &str, sent: &Value) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut status = json!({
        "id": wamid,
        "status": "sent",
        "timestamp": now.to_string(),
        "recipient_id": sent.get("to").cloned().unwrap_or(Value::Null),
        "conversation": {
            "id": "72b14d6bd5407799e66f64d1b338e567",
            "expiration_timestamp": (now + 86_400).to_string(),
            "origin": {"type": "service"}
        },
        "pricing": {"billable": false, "pricing_model": "PMP", "type": "free_customer_service", "category": "service"}
    });
    if let Some(cb) = sent.get("biz_opaque_callback_data") {
        status["biz_opaque_callback_data"] = cb.clone();
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": pnid},
            "statuses": [status]
        }}]}]
    })
    .to_string()
    .into_bytes()
}

/// Posts one status webhook after `delay`, re-delivering until Sandra answers 200 (wherever it
/// listens by then), as Meta does.
async fn deliver_status(
    inner: Arc<Mutex<Inner>>,
    delay: Duration,
    body: Vec<u8>,
    callback: String,
) {
    tokio::time::sleep(delay).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let signature = super::sign(&body);
    let give_up = Instant::now() + STATUS_GIVE_UP;
    loop {
        let url = inner.lock().unwrap().statuses.url.clone();
        if let Some(url) = url {
            let ok = client
                .post(&url)
                .header("content-type", "application/json")
                .header("X-Hub-Signature-256", &signature)
                .body(body.clone())
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ok {
                let mut g = inner.lock().unwrap();
                g.statuses.outstanding -= 1;
                g.statuses.delivered += 1;
                g.statuses.delivered_at.push((callback, Instant::now()));
                return;
            }
        }
        if Instant::now() > give_up {
            let mut g = inner.lock().unwrap();
            g.statuses.outstanding -= 1;
            g.statuses.abandoned += 1;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A listener whose connections a handler can close without answering ([`Fault::Drop`]).
struct KillableListener(tokio::net::TcpListener);

/// Identifies a connection to its handler (as connect info) and can kill it.
#[derive(Clone)]
pub struct ConnHandle(Arc<KillSwitch>);

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnHandle")
    }
}

#[derive(Default)]
struct KillSwitch {
    killed: AtomicBool,
    /// The tasks last parked reading (0) and writing (1): woken by `kill` so they see it.
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl ConnHandle {
    /// From now on every read and write on this connection fails, so hyper drops it without
    /// writing a byte of the response.
    fn kill(&self) {
        self.0.killed.store(true, Ordering::SeqCst);
        for w in self.0.wakers.lock().unwrap().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }
}

struct KillableStream {
    inner: tokio::net::TcpStream,
    switch: Arc<KillSwitch>,
}

impl KillableStream {
    fn dead(&self, cx: &Context<'_>, slot: usize) -> bool {
        if self.switch.killed.load(Ordering::SeqCst) {
            return true;
        }
        self.switch.wakers.lock().unwrap()[slot] = Some(cx.waker().clone());
        // Killed between the check and registering the waker: nobody will wake us.
        self.switch.killed.load(Ordering::SeqCst)
    }
}

fn reset() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "killed by Fault::Drop")
}

impl tokio::io::AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.dead(cx, 0) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.dead(cx, 1) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.dead(cx, 1) {
            return Poll::Ready(Err(reset()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = ConnHandle;

    async fn accept(&mut self) -> (KillableStream, ConnHandle) {
        loop {
            match self.0.accept().await {
                Ok((inner, _)) => {
                    let switch = Arc::new(KillSwitch::default());
                    let handle = ConnHandle(switch.clone());
                    return (KillableStream { inner, switch }, handle);
                }
                // Out of file descriptors and the like: back off rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<ConnHandle> {
        Ok(ConnHandle(Arc::new(KillSwitch::default())))
    }
}

impl Connected<axum::serve::IncomingStream<'_, KillableListener>> for ConnHandle {
    fn connect_info(stream: axum::serve::IncomingStream<'_, KillableListener>) -> Self {
        stream.remote_addr().clone()
    }
}
