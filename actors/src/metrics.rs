//! Counters every part of Sandra bumps, rendered at `GET /metrics` in Prometheus' text format.
//! Dropped, rejected and shed work is always counted (never silently lost).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Metrics { $(pub $name: AtomicU64,)* pub time_to_reply: Histo, pub transcription_rtf: Histo }
        impl Metrics {
            /// Prometheus text exposition of every counter.
            pub fn render(&self) -> String {
                self.sync_external();
                let mut s = String::new();
                $(
                    s.push_str(concat!("# HELP sandra_", stringify!($name), " ", $help, "\n"));
                    s.push_str(concat!("sandra_", stringify!($name), " "));
                    s.push_str(&self.$name.load(Ordering::Relaxed).to_string());
                    s.push('\n');
                )*
                s
            }
        }
    };
}

/// Placeholder until histograms land (lead's branch only; replaced at merge).
#[derive(Debug, Default)]
pub struct Histo;
impl Histo {
    pub fn record(&self, _v: f64) {}
}

counters! {
    webhooks_accepted: "webhook POSTs answered 200",
    webhooks_bad_signature: "webhook POSTs rejected 401 (missing or wrong signature)",
    webhooks_too_large: "webhook POSTs rejected 413",
    webhooks_overloaded: "webhook POSTs shed with 503 by admission control",
    webhooks_not_json: "signed bodies that were not JSON, kept in the dead-letter tree",
    webhooks_store_errors: "webhook POSTs answered 500 because storage failed",
    messages_accepted: "inbound messages stored for the first time",
    messages_duplicate: "inbound messages dropped as duplicates",
    messages_unsupported: "inbound messages of a type Sandra cannot read",
    messages_rate_limited: "inbound messages dropped unanswered because their sender was over limits.messages_per_minute",
    messages_blocked: "inbound messages dropped unanswered because their sender is blocked or not on the allowlist",
    statuses_applied: "status webhooks applied to outbox records",
    statuses_duplicate: "status webhooks dropped as duplicates",
    statuses_unmatched: "status webhooks for messages Sandra has no record of",
    items_ignored: "webhook items accepted and ignored (unknown field values, value-level errors)",
    turns_completed: "conversation turns committed",
    turns_brain_errors: "turns whose brain failed (the user got an apology)",
    conversations_spawned: "conversation actors started",
    conversations_passivated: "idle conversation actors stopped",
    conversations_failed: "conversation actors that crashed and were restarted",
    poison_messages: "messages moved to dead-letter (with an apology) after every attempt crashed",
    sends_ok: "messages accepted by the Graph API",
    sends_retried: "send attempts that failed transiently and will be retried",
    sends_failed: "messages that failed permanently",
    sends_held: "messages not attempted because the 24 h window is closed",
    typing_sent: "read receipts / typing indicators sent",
    token_invalid: "1 while the access token is known to be invalid (error 190)",
    webhooks_other_number: "webhook POSTs carrying items for a business number other than whatsapp.phone_number_id (answered 200, those items ignored)",
    items_other_number: "messages and statuses ignored because they were addressed to another business number",
    http_header_timeouts: "connections closed because no complete request head arrived within server.header_timeout of opening (idle keep-alive connections between requests are closed without counting)",
    transcriptions_busy: "voice notes refused because the transcription actor had transcription.max_jobs in progress",
    model_jobs_skipped: "model jobs (chat, transcription) skipped because whoever asked had gone (e.g. a timed-out turn)",
}

impl Metrics {
    /// Copies counters kept outside this struct (the model workers' own) before rendering.
    fn sync_external(&self) {
        self.model_jobs_skipped
            .store(sandra_models::worker::skipped_jobs(), Ordering::Relaxed);
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
