//! The Graph API client: the only code that talks to Meta (sends, read receipts, media).
//!
//! Errors are classified by Meta's `error.code`, not by HTTP status (Meta and its mirrors
//! disagree on statuses; the code is what Meta tells integrators to build on). See
//! [`GraphError::class`].

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::secret::{Credentials, ExposeSecret, Live};
use crate::store::{OutboundBody, OutboxRecord};

/// How to reach the Graph API for one business number.
#[derive(Clone, Debug)]
pub struct GraphConfig {
    /// `https://graph.facebook.com` in production; a loopback fake in tests.
    pub base_url: String,
    /// Live: the Admin Portal and SIGHUP change them while Sandra runs.
    pub api_version: Live<String>,
    pub phone_number_id: Live<String>,
    /// The access token, shared with every other holder (see [`Credentials`]): read per request,
    /// so a replaced token is used by the next call of every clone.
    pub credentials: Credentials,
    pub timeout: Duration,
}

/// What the caller should do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (throughput, pair rate, maintenance, 5xx, network): retry with backoff.
    Retry,
    /// 131047: the 24-hour customer-service window is closed. Do not retry free-form messages.
    WindowClosed,
    /// 190: the access token is expired or invalid. Stop sending until it is replaced.
    TokenInvalid,
    /// Anything retrying cannot fix (bad parameters, undeliverable, policy).
    Permanent,
}

/// A failed Graph call, with Meta's envelope when there was one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("graph error{}: {message}", code.map(|c| format!(" {c}")).unwrap_or_default())]
pub struct GraphError {
    /// HTTP status, or `None` when no response came back (timeout, connection refused).
    pub http_status: Option<u16>,
    pub code: Option<i64>,
    pub subcode: Option<i64>,
    pub message: String,
    pub details: Option<String>,
    /// `Retry-After`, in seconds, when the response carried one.
    pub retry_after: Option<Duration>,
    /// Meta may have taken the message although we saw no answer saying so: the request timed
    /// out, the connection was lost after the request was written, or a 2xx answer was
    /// unreadable. A retry must first give the status webhook time to reconcile (a resend would
    /// deliver the message twice: Meta has no idempotency key).
    pub outcome_unknown: bool,
}

impl GraphError {
    /// An error found on our side of the call (no Meta envelope): a bad response shape, a limit.
    fn local(http_status: Option<u16>, message: String) -> Self {
        Self {
            http_status,
            code: None,
            subcode: None,
            message,
            details: None,
            retry_after: None,
            outcome_unknown: false,
        }
    }

    /// A message that could not be made on Sandra's side, so no Graph call was made (a voice
    /// note that could not be spoken): transient when `retry` (retried with backoff like a
    /// network error), else permanent. The permanent form carries HTTP 422 ("unprocessable"),
    /// which nothing from Meta is classified by, to land in [`ErrorClass::Permanent`].
    pub fn not_sent(message: &str, retry: bool) -> Self {
        Self::local((!retry).then_some(422), message.to_string())
    }

    /// The media download was cut off at the caller's size limit.
    pub fn is_over_limit(&self) -> bool {
        self.http_status == Some(413) && self.code.is_none()
    }

    pub fn class(&self) -> ErrorClass {
        match self.code {
            Some(131047) => ErrorClass::WindowClosed,
            Some(190) => ErrorClass::TokenInvalid,
            // Throughput, pair rate, app/WABA rate limits, maintenance, unknown/transient.
            Some(130429 | 131056 | 4 | 80007 | 613 | 131057 | 131000 | 131016 | 1 | 2) => {
                ErrorClass::Retry
            }
            Some(_) => match self.http_status {
                Some(s) if s >= 500 => ErrorClass::Retry,
                _ => ErrorClass::Permanent,
            },
            None => match self.http_status {
                None => ErrorClass::Retry,
                Some(429) => ErrorClass::Retry,
                Some(s) if s >= 500 => ErrorClass::Retry,
                Some(401) => ErrorClass::TokenInvalid,
                Some(_) => ErrorClass::Permanent,
            },
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    error: EnvelopeError,
}

#[derive(Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    error_subcode: Option<i64>,
    #[serde(default)]
    error_data: Option<Value>,
}

/// Media metadata from hop 1 of a download.
#[derive(Debug, Clone, Deserialize)]
pub struct MediaInfo {
    pub url: String,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// A string in Meta's docs, a number in real captures: accept both.
    #[serde(default, deserialize_with = "de_size")]
    pub file_size: Option<u64>,
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    Ok(match v {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    })
}

#[derive(Clone, Debug)]
pub struct GraphClient {
    http: reqwest::Client,
    cfg: GraphConfig,
    /// The playground's channel, shared by clones: local replies and media never reach Meta.
    local: crate::playground::LocalHub,
}

impl GraphClient {
    pub fn new(cfg: GraphConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("building the HTTP client");
        Self {
            http,
            cfg,
            local: crate::playground::LocalHub::default(),
        }
    }

    /// Where replies to playground chats go and playground media comes from.
    pub fn local(&self) -> &crate::playground::LocalHub {
        &self.local
    }

    pub fn config(&self) -> &GraphConfig {
        &self.cfg
    }

    /// The shared access-token handle this client (and every clone) reads per request.
    pub fn credentials(&self) -> &Credentials {
        &self.cfg.credentials
    }

    /// Whether hop 2 of a media download may carry the bearer token to `url`: only over
    /// `https://`, or to the very origin (scheme, host, port) of `base_url` (a local fake in
    /// tests). The URL comes from a JSON answer, so anything else (plain http elsewhere, a
    /// malformed URL) is refused rather than handing the token to whoever it names.
    pub fn media_url_trusted(&self, url: &str) -> bool {
        let Ok(u) = reqwest::Url::parse(url) else {
            return false;
        };
        if u.scheme() == "https" && u.host().is_some() {
            return true;
        }
        reqwest::Url::parse(&self.cfg.base_url)
            .is_ok_and(|base| base.origin() == u.origin() && u.origin().is_tuple())
    }

    fn messages_url(&self) -> String {
        format!(
            "{}/{}/{}/messages",
            self.cfg.base_url.trim_end_matches('/'),
            self.cfg.api_version.get(),
            self.cfg.phone_number_id.get()
        )
    }

    fn media_upload_url(&self) -> String {
        format!(
            "{}/{}/{}/media",
            self.cfg.base_url.trim_end_matches('/'),
            self.cfg.api_version.get(),
            self.cfg.phone_number_id.get()
        )
    }

    /// The JSON body Meta expects for an outbox record. A voice record needs the id of its
    /// uploaded note ([`Self::send_voice`]); without one it has no body Meta would take.
    pub fn message_body(rec: &OutboxRecord) -> Value {
        Self::message_body_with_media(rec, None)
    }

    fn message_body_with_media(rec: &OutboxRecord, media_id: Option<&str>) -> Value {
        let mut body = json!({ "messaging_product": "whatsapp" });
        let t = &rec.target;
        if let Some(g) = &t.group_id {
            body["recipient_type"] = json!("group");
            body["to"] = json!(g);
        } else {
            body["recipient_type"] = json!("individual");
            if let Some(p) = &t.phone {
                body["to"] = json!(p);
            } else if let Some(u) = &t.user_id {
                body["recipient"] = json!(u);
            }
        }
        match &rec.body {
            OutboundBody::Text { body: text } => {
                body["type"] = json!("text");
                body["text"] = json!({ "preview_url": false, "body": text });
            }
            OutboundBody::Template { name, language } => {
                body["type"] = json!("template");
                body["template"] = json!({ "name": name, "language": { "code": language } });
            }
            OutboundBody::Voice { .. } => {
                body["type"] = json!("audio");
                body["audio"] = json!({ "id": media_id.unwrap_or_default() });
            }
        }
        if let Some(ctx) = &rec.context_message_id {
            body["context"] = json!({ "message_id": ctx });
        }
        body["biz_opaque_callback_data"] = json!(rec.idempotency_key);
        body
    }

    /// Sends one outbox record; returns the wamid Meta assigned.
    pub async fn send(&self, rec: &OutboxRecord) -> Result<String, GraphError> {
        let v = self
            .post_json(&self.messages_url(), &Self::message_body(rec))
            .await?;
        v.pointer("/messages/0/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                GraphError::local(Some(200), "send response without messages[0].id".into())
            })
    }

    /// Sends a voice record as one step: uploads `ogg` (`POST /{phone-number-id}/media`,
    /// multipart), then sends the audio message that points at it; returns its wamid. A failed
    /// upload is never "outcome unknown": nobody receives an uploaded file until a message
    /// names it, so uploading again is harmless (an orphan upload expires after 30 days).
    pub async fn send_voice(&self, rec: &OutboxRecord, ogg: Vec<u8>) -> Result<String, GraphError> {
        let media_id = self
            .upload_media(ogg, VOICE_MIME, "voice.ogg")
            .await
            .map_err(|e| GraphError {
                outcome_unknown: false,
                ..e
            })?;
        let v = self
            .post_json(
                &self.messages_url(),
                &Self::message_body_with_media(rec, Some(&media_id)),
            )
            .await?;
        v.pointer("/messages/0/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                GraphError::local(Some(200), "send response without messages[0].id".into())
            })
    }

    /// Uploads a file to Meta's media store (`messaging_product`, `type` and `file` as
    /// multipart form fields, the bearer token); returns the media id.
    pub async fn upload_media(
        &self,
        bytes: Vec<u8>,
        mime: &str,
        filename: &str,
    ) -> Result<String, GraphError> {
        // `type` is the bare MIME type; the file part keeps its codec parameter.
        let bare = mime.split(';').next().unwrap_or(mime).trim().to_string();
        let file = reqwest::multipart::Part::bytes(bytes)
            .file_name(filename.to_string())
            .mime_str(mime)
            .map_err(|e| GraphError::local(None, format!("MIME type {mime:?}: {e}")))?;
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", bare)
            .part("file", file);
        let resp = self
            .http
            .post(self.media_upload_url())
            .bearer_auth(self.cfg.credentials.current().expose_secret())
            .multipart(form)
            .send()
            .await
            .map_err(transport_error)?;
        let v = read_json(resp).await?;
        v.get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| GraphError::local(Some(200), "upload response without an id".into()))
    }

    /// Marks an inbound message read and, with `typing`, shows the typing indicator (~25 s).
    pub async fn mark_read(&self, wamid: &str, typing: bool) -> Result<(), GraphError> {
        let mut body = json!({"messaging_product":"whatsapp","status":"read","message_id":wamid});
        if typing {
            body["typing_indicator"] = json!({"type":"text"});
        }
        self.post_json(&self.messages_url(), &body)
            .await
            .map(|_| ())
    }

    /// Hop 1 of a media download: the short-lived URL and metadata.
    pub async fn media_info(&self, media_id: &str) -> Result<MediaInfo, GraphError> {
        let url = format!(
            "{}/{}/{}?phone_number_id={}",
            self.cfg.base_url.trim_end_matches('/'),
            self.cfg.api_version.get(),
            media_id,
            self.cfg.phone_number_id.get()
        );
        let resp = self
            .http
            .get(url)
            .bearer_auth(self.cfg.credentials.current().expose_secret())
            .send()
            .await
            .map_err(transport_error)?;
        let v = read_json(resp).await?;
        serde_json::from_value(v)
            .map_err(|e| GraphError::local(Some(200), format!("unexpected media info: {e}")))
    }

    /// Hop 2: the bytes, with the same bearer token, refusing more than `max_bytes` and any
    /// URL [`Self::media_url_trusted`] refuses (checked here too, so no caller can forget).
    pub async fn media_bytes(&self, url: &str, max_bytes: u64) -> Result<Vec<u8>, GraphError> {
        if !self.media_url_trusted(url) {
            return Err(GraphError::local(
                Some(403),
                "refusing to send the access token to an untrusted media URL".into(),
            ));
        }
        let mut resp = self
            .http
            .get(url)
            .bearer_auth(self.cfg.credentials.current().expose_secret())
            .send()
            .await
            .map_err(transport_error)?;
        if !resp.status().is_success() {
            return Err(error_from(resp).await);
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            if out.len() as u64 + chunk.len() as u64 > max_bytes {
                // Reported as 413 so callers can tell the cap from a failed download.
                return Err(GraphError::local(
                    Some(413),
                    format!("media larger than {max_bytes} bytes"),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn post_json(&self, url: &str, body: &Value) -> Result<Value, GraphError> {
        let resp = self
            .http
            .post(url)
            .bearer_auth(self.cfg.credentials.current().expose_secret())
            .json(body)
            .send()
            .await
            .map_err(transport_error)?;
        read_json(resp).await
    }
}

/// The MIME type voice notes are uploaded as (Ogg with Opus inside, as Meta requires).
pub const VOICE_MIME: &str = "audio/ogg; codecs=opus";

async fn read_json(resp: reqwest::Response) -> Result<Value, GraphError> {
    if !resp.status().is_success() {
        return Err(error_from(resp).await);
    }
    let status = resp.status().as_u16();
    resp.json::<Value>().await.map_err(|e| GraphError {
        outcome_unknown: e.is_timeout() || (200..300).contains(&status),
        ..GraphError::local(Some(status), format!("response is not JSON: {e}"))
    })
}

fn transport_error(e: reqwest::Error) -> GraphError {
    // reqwest's Display includes the URL, never headers: no token leaks here.
    // Only a failure to connect proves the request never left; any later failure (a timeout,
    // a connection reset or closed before the answer) may come after Meta acted on it.
    GraphError {
        outcome_unknown: !e.is_connect() && !e.is_builder(),
        ..GraphError::local(None, e.to_string())
    }
}

async fn error_from(resp: reqwest::Response) -> GraphError {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<Envelope>(&text) {
        Ok(env) => GraphError {
            http_status: Some(status),
            code: env.error.code,
            subcode: env.error.error_subcode,
            message: env.error.message,
            details: env
                .error
                .error_data
                .as_ref()
                .and_then(|d| d.get("details"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            retry_after,
            outcome_unknown: false,
        },
        Err(_) => GraphError {
            retry_after,
            ..GraphError::local(
                Some(status),
                format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                ),
            )
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: Option<i64>, http: Option<u16>) -> GraphError {
        GraphError {
            code,
            ..GraphError::local(http, String::new())
        }
    }

    fn client(base_url: &str) -> GraphClient {
        GraphClient::new(GraphConfig {
            base_url: base_url.into(),
            api_version: "v26.0".into(),
            phone_number_id: "1".into(),
            credentials: Credentials::new("t".into()),
            timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn the_token_goes_only_to_https_or_the_graph_origin() {
        let prod = client("https://graph.facebook.com");
        assert!(prod.media_url_trusted("https://lookaside.fbsbx.com/whatsapp_business/x?y=1"));
        assert!(!prod.media_url_trusted("http://lookaside.fbsbx.com/x"));
        assert!(!prod.media_url_trusted("http://graph.facebook.com/x"));
        assert!(!prod.media_url_trusted("file:///etc/passwd"));
        assert!(!prod.media_url_trusted("not a url"));
        let fake = client("http://127.0.0.1:4000");
        assert!(fake.media_url_trusted("http://127.0.0.1:4000/lookaside/m1"));
        assert!(!fake.media_url_trusted("http://127.0.0.1:4001/lookaside/m1"));
        assert!(!fake.media_url_trusted("http://evil.example:4000/lookaside/m1"));
    }

    #[test]
    fn classification_follows_the_code_not_the_status() {
        assert_eq!(err(Some(130429), Some(400)).class(), ErrorClass::Retry);
        assert_eq!(err(Some(130429), Some(429)).class(), ErrorClass::Retry);
        assert_eq!(err(Some(131056), Some(400)).class(), ErrorClass::Retry);
        assert_eq!(
            err(Some(131047), Some(400)).class(),
            ErrorClass::WindowClosed
        );
        assert_eq!(err(Some(190), Some(401)).class(), ErrorClass::TokenInvalid);
        assert_eq!(err(Some(131026), Some(400)).class(), ErrorClass::Permanent);
        assert_eq!(err(Some(100), Some(400)).class(), ErrorClass::Permanent);
        assert_eq!(err(None, Some(503)).class(), ErrorClass::Retry);
        assert_eq!(err(None, None).class(), ErrorClass::Retry);
    }
}
