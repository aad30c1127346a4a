//! Webhook ingestion as a service: verify → parse → accept (+ group commit) → route.
//!
//! [`Ingest::ingest`] takes the raw body of a webhook POST and its `X-Hub-Signature-256` header,
//! and returns once the body's messages are durable (or it was refused). The HTTP layer only
//! reads the body within its limits and maps the result to a status code; everything Sandra
//! knows about a webhook lives here.
//!
//! - **Verify**: HMAC-SHA256 over the exact bytes received, compared in constant time; a body
//!   whose non-ASCII text a proxy un-escaped is checked against Meta's `\uXXXX` form, up to a
//!   bound (see [`signature_valid_within`]). Big bodies are hashed on the blocking pool.
//! - **Parse**: non-exhaustive, our business number only ([`crate::whatsapp::parse_webhook_for`]).
//!   A signed body that is not Meta's JSON envelope is kept in dead-letter and acknowledged.
//! - **Accept**: one sled transaction (dedup + inbox, statuses), then [`Store::sync`], the group
//!   commit that makes it durable before anyone answers 200.
//! - **Route**: new (and redelivered) messages are cast to the router; if it is restarting they
//!   wait in the inbox and the new router replays them.

use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::metrics::Metrics;
use crate::router::RouterMsg;
use crate::secret::{ExposeSecret, Live, SecretString};
use crate::slot::ActorSlot;
use crate::store::{Store, StoreError, now_ms};

/// What the ingest service needs from the configuration.
#[derive(Clone)]
pub struct IngestConfig {
    /// Meta's app secret, the HMAC key of every webhook. Empty: every webhook is refused.
    /// Live (like `phone_number_id`): the Admin Portal and SIGHUP change it while Sandra runs.
    pub app_secret: Live<SecretString>,
    /// The business number Sandra answers for; webhook items for any other number are
    /// acknowledged and dropped. Empty: not configured, nothing is filtered.
    pub phone_number_id: Live<String>,
    /// The largest body the HTTP layer reads: no re-escaped form longer than this was ever a
    /// body Meta signed (see [`signature_valid_within`]).
    pub max_body_bytes: usize,
}

/// A webhook that may be acknowledged with 200: durable, or deliberately dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ingested {
    /// Messages stored for the first time (and routed).
    pub new_messages: usize,
    /// Signed but not Meta's envelope: kept in dead-letter for a human, not retried.
    pub dead_lettered: bool,
}

/// A webhook that must not be acknowledged with 200.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Missing or wrong `X-Hub-Signature-256`, or no app secret configured (nothing verifies).
    #[error("bad webhook signature")]
    BadSignature {
        /// False when `whatsapp.app_secret` is empty.
        secret_configured: bool,
        /// Whether the request carried the signature header at all.
        had_header: bool,
    },
    /// Storing or flushing failed: nothing is acknowledged, so Meta retries.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The ingestion service (one per [`crate::System`]).
pub struct Ingest {
    cfg: IngestConfig,
    store: Arc<Store>,
    router: ActorSlot<RouterMsg>,
    metrics: Arc<Metrics>,
}

/// Bodies larger than this are hashed on the blocking pool: a 3 MiB body (and its re-escaped
/// copy) takes milliseconds of CPU, which would stall every other request on that runtime
/// thread.
const HASH_INLINE_MAX: usize = 64 * 1024;

impl Ingest {
    pub fn new(
        cfg: IngestConfig,
        store: Arc<Store>,
        router: ActorSlot<RouterMsg>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            cfg,
            store,
            router,
            metrics,
        }
    }

    /// Verifies, parses, stores durably and routes one webhook body. `Ok` means answer 200.
    pub async fn ingest(
        &self,
        body: Bytes,
        signature: Option<&str>,
    ) -> Result<Ingested, IngestError> {
        let m = &self.metrics;
        if !self.signature_ok(&body, signature).await {
            Metrics::inc(&m.webhooks_bad_signature);
            return Err(IngestError::BadSignature {
                secret_configured: !self.cfg.app_secret.get().expose_secret().is_empty(),
                had_header: signature.is_some(),
            });
        }
        let result = self.store_and_route(&body).await;
        match &result {
            Ok(_) => Metrics::inc(&m.webhooks_accepted),
            Err(_) => Metrics::inc(&m.webhooks_store_errors),
        }
        result
    }

    async fn store_and_route(&self, body: &[u8]) -> Result<Ingested, IngestError> {
        let (store, m) = (&self.store, &self.metrics);
        let number = self.cfg.phone_number_id.get();
        let ours = (!number.is_empty()).then_some(number.as_str());
        let batch = match crate::whatsapp::parse_webhook_for(body, ours) {
            Ok(b) => b,
            Err(e) => {
                // Signed by Meta but unusable: keep it for a human, and do not make Meta retry.
                Metrics::inc(&m.webhooks_not_json);
                tracing::warn!(error = %e, "signed webhook body is not JSON; kept in dead-letter");
                store.dead_letter(body, &e.to_string())?;
                store.sync().await?;
                return Ok(Ingested {
                    new_messages: 0,
                    dead_lettered: true,
                });
            }
        };
        if !batch.other_numbers.is_empty() {
            // Genuine (signed) but for another number of the same business account: answering
            // from ours would be wrong, and a non-200 would make Meta retry for a week.
            let items: usize = batch.other_numbers.iter().map(|(_, n)| n).sum();
            Metrics::inc(&m.webhooks_other_number);
            Metrics::add(&m.items_other_number, items as u64);
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
        Metrics::add(&m.items_ignored, batch.ignored.len() as u64);
        let received = now_ms();
        let accepted = store.accept(&batch, received)?;
        for rec in &accepted.new_messages {
            // The user wrote: a new 24-hour window, so replies held for them can go now (the
            // sender finds them at its next outbox read, ahead of this message's answer).
            // (Meta's timestamp when it has one, as the conversation counts the window.) A crash
            // right after `accept` leaves them held until the user's next message.
            let opened = if rec.message.timestamp > 0 {
                rec.message.timestamp
            } else {
                received / 1000
            };
            let released = store.release_held(&rec.key, opened + 24 * 3600)?;
            if released > 0 {
                tracing::info!(key = %rec.key, released, "held replies released: the user wrote again");
            }
        }
        for g in &batch.closed_groups {
            // Durable before the 200 like the messages: once Meta hears back, nothing more is
            // sent to that group, even after a crash.
            let done = store.close_conversation(&g.key, &g.reason, now_ms() / 1000)?;
            Metrics::inc(&m.conversations_closed);
            tracing::info!(
                key = %g.key,
                reason = %g.reason,
                dropped_messages = done.dropped_messages,
                cancelled_replies = done.cancelled_replies,
                "group conversation closed"
            );
        }
        store.sync().await?;
        Metrics::add(&m.messages_accepted, accepted.new_messages.len() as u64);
        Metrics::add(&m.messages_duplicate, accepted.duplicate_messages as u64);
        Metrics::add(&m.statuses_applied, accepted.statuses_applied as u64);
        Metrics::add(&m.statuses_duplicate, accepted.duplicate_statuses as u64);
        Metrics::add(&m.statuses_unmatched, accepted.statuses_unmatched as u64);
        Metrics::add(&m.messages_to_closed, accepted.to_closed as u64);
        if accepted.to_closed > 0 {
            tracing::info!(
                messages = accepted.to_closed,
                "messages for closed group conversations recorded and not answered"
            );
        }
        for key in &accepted.windows_closed {
            tracing::info!(%key, "Meta closed the 24-hour window (131047)");
        }
        let ingested = Ingested {
            new_messages: accepted.new_messages.len(),
            dead_lettered: false,
        };
        if !accepted.new_messages.is_empty() || !accepted.redelivered.is_empty() {
            match self.router.try_get() {
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
        if !batch.closed_groups.is_empty() {
            match self.router.try_get() {
                Some(router) => {
                    for g in &batch.closed_groups {
                        let _ = router.cast(RouterMsg::Close(g.key.clone()));
                    }
                }
                // A restarting router starts only conversations with unanswered messages, and
                // a closed one has none left.
                None => tracing::warn!("router not running; closed conversations stop with it"),
            }
        }
        Ok(ingested)
    }

    async fn signature_ok(&self, body: &Bytes, header_value: Option<&str>) -> bool {
        let max = self.cfg.max_body_bytes;
        let secret = self.cfg.app_secret.get();
        if body.len() <= HASH_INLINE_MAX {
            return signature_valid_within(
                secret.expose_secret().as_bytes(),
                body,
                header_value,
                max,
            );
        }
        let (secret, body, sig) = (secret, body.clone(), header_value.map(str::to_owned));
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
