//! Everything Sandra counts and times, rendered at `GET /metrics` in Prometheus' text format (with
//! `# HELP` and `# TYPE` lines) by `metrics-exporter-prometheus`. Dropped, rejected and shed work
//! is always counted (never silently lost).
//!
//! Each [`Metrics`] owns its own recorder instead of installing the process-global one: tests run
//! many apps in one process, and each must read its own numbers. The handles are registered once
//! here, so call sites only bump a field (`Metrics::inc(&m.sends_ok)`) and never name a metric.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Every metric is named `sandra_<field>`.
macro_rules! metrics_struct {
    (
        counters { $($c:ident: $chelp:literal),* $(,)? }
        gauges { $($g:ident: $ghelp:literal),* $(,)? }
        histograms { $($(#[doc = $hdoc:literal])* $h:ident: $hhelp:literal, $unit:expr, $buckets:expr;)* }
    ) => {
        pub struct Metrics {
            handle: PrometheusHandle,
            $(#[doc = $chelp] pub $c: Counter,)*
            $(#[doc = $ghelp] pub $g: Gauge,)*
            $($(#[doc = $hdoc])* pub $h: Histogram,)*
        }

        impl Default for Metrics {
            fn default() -> Self {
                let mut builder = PrometheusBuilder::new();
                $(
                    builder = builder
                        .set_buckets_for_metric(
                            metrics_exporter_prometheus::Matcher::Full(
                                concat!("sandra_", stringify!($h)).to_string(),
                            ),
                            $buckets,
                        )
                        .expect("bucket lists are not empty");
                )*
                let recorder = builder.build_recorder();
                let handle = recorder.handle();
                Self {
                    $($c: counter(&recorder, concat!("sandra_", stringify!($c)), $chelp),)*
                    $($g: gauge(&recorder, concat!("sandra_", stringify!($g)), $ghelp),)*
                    $($h: histogram(&recorder, concat!("sandra_", stringify!($h)), $hhelp, $unit),)*
                    handle,
                }
            }
        }
    };
}

metrics_struct! {
    counters {
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
        conversations_closed: "group conversations ended because the group was deleted or Sandra was removed (group_* webhooks)",
        messages_to_closed: "inbound messages for a closed group conversation, recorded as seen and never answered",
        poison_messages: "messages moved to dead-letter (with an apology) after every attempt crashed",
        sends_ok: "messages accepted by the Graph API",
        sends_retried: "send attempts that failed transiently and will be retried",
        sends_failed: "messages that failed permanently",
        sends_held: "messages not attempted because the 24 h window is closed",
        voice_notes_sent: "voice replies spoken, uploaded and sent as audio messages (their text went as its own message)",
        voice_notes_failed: "voice replies given up (no voice, speech or upload failed); their text went anyway",
        typing_sent: "read receipts / typing indicators sent",
        wait_notices: "\"got it, answering in a moment\" notices queued for turns that waited longer than conversation.wait_notice_after",
        webhooks_other_number: "webhook POSTs carrying items for a business number other than whatsapp.phone_number_id (answered 200, those items ignored)",
        items_other_number: "messages and statuses ignored because they were addressed to another business number",
        http_header_timeouts: "connections closed because no complete request head arrived within server.header_timeout of opening (idle keep-alive connections between requests are closed without counting)",
        transcriptions_busy: "voice notes that had to wait for a slot because transcription.max_jobs notes were in progress",
        vision_busy: "photos and documents that had to wait for a slot because vision.max_jobs were in progress",
        model_jobs_skipped: "model jobs (chat, transcription) skipped because whoever asked had gone (e.g. a timed-out turn)",
        link_codes_mailed: "verification codes for linking mailed (accepted by the SMTP server)",
        link_mail_failures: "verification code mails that failed every try or were refused by the SMTP server",
    }
    gauges {
        token_invalid: "1 while the access token is known to be invalid (error 190)",
        outbox_pending: "messages waiting to be sent",
        dead_letters: "bodies and messages kept in dead-letter",
        transcription_jobs: "voice notes in progress in the transcription actor (download, decode, transcription)",
        vision_jobs: "photos and documents in progress in the vision actor (download, decode, OCR)",
    }
    histograms {
        /// Record once per webhook POST answered: seconds from its first byte to the response.
        webhook_ack_seconds: "seconds from the first byte of a webhook POST to its response",
            Unit::Seconds, &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        /// Recorded by the model workers: seconds a job waited in a queue before it started.
        model_queue_wait_seconds: "seconds a model job waited in its worker's queue before it started",
            Unit::Seconds, &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        /// Record once per reply of a local or remote model: completion tokens divided by the
        /// wall time of the chat call that produced them.
        llm_tokens_per_second: "generated tokens per second of the chat call, one sample per reply",
            Unit::Count, &[1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 500.0];
        /// Recorded once per committed turn that sends a reply: seconds from the oldest message
        /// of the turn being accepted (its `received_at_ms`: what waited longest) to the commit
        /// that puts the reply in the outbox.
        time_to_reply_seconds: "seconds from accepting a user's message to committing Sandra's reply",
            Unit::Seconds, &[0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];
        /// Recorded once per transcribed voice note: seconds Whisper took (queue wait included,
        /// decoding not) divided by the seconds of audio heard (below 1 is faster than real time).
        transcription_rtf: "transcription real-time factor: processing seconds per second of audio",
            Unit::Count, &[0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0];
        /// Recorded once per spoken voice reply: seconds from asking the voice's thread (queue
        /// wait included) to the encoded note, divided by the seconds of speech.
        speech_rtf: "speech real-time factor: seconds of compute per second of voice reply",
            Unit::Count, &[0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0];
        /// Recorded once per photo or scanned document read: seconds from asking the vision
        /// model thread to its answer (queue wait, OCR and a local scene model included; the
        /// download and decoding not).
        vision_ocr_seconds: "seconds the vision models took for one photo or one document's scanned pages",
            Unit::Seconds, &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0];
    }
}

const META: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

fn counter(r: &PrometheusRecorder, name: &'static str, help: &'static str) -> Counter {
    r.describe_counter(KeyName::from_const_str(name), None, help.into());
    r.register_counter(&Key::from_static_name(name), &META)
}

fn gauge(r: &PrometheusRecorder, name: &'static str, help: &'static str) -> Gauge {
    r.describe_gauge(KeyName::from_const_str(name), None, help.into());
    let g = r.register_gauge(&Key::from_static_name(name), &META);
    // Registered gauges render from the start, at 0 like the counters.
    g.set(0.0);
    g
}

fn histogram(
    r: &PrometheusRecorder,
    name: &'static str,
    help: &'static str,
    unit: Unit,
) -> Histogram {
    // The unit is documentation only: the exporter adds no unit suffix unless asked to.
    r.describe_histogram(KeyName::from_const_str(name), Some(unit), help.into());
    r.register_histogram(&Key::from_static_name(name), &META)
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.sync_external();
        self.handle.render()
    }

    /// The current value of the counter or gauge `sandra_<name>` (for tests and benchmarks,
    /// which read the same numbers `GET /metrics` shows).
    pub fn value(&self, name: &str) -> Option<f64> {
        let prefix = format!("sandra_{name} ");
        self.render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Copies counters kept outside this struct (the model workers' own) before rendering.
    fn sync_external(&self) {
        self.model_jobs_skipped
            .absolute(sandra_models::worker::skipped_jobs());
    }

    pub fn inc(c: &Counter) {
        c.increment(1);
    }
    pub fn add(c: &Counter, n: u64) {
        c.increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_and_type_for_every_kind() {
        let m = Metrics::default();
        Metrics::add(&m.sends_ok, 3);
        m.outbox_pending.set(2.0);
        m.webhook_ack_seconds.record(0.003);
        let text = m.render();
        for line in [
            "# TYPE sandra_sends_ok counter",
            "# HELP sandra_sends_ok messages accepted by the Graph API",
            "sandra_sends_ok 3",
            "# TYPE sandra_outbox_pending gauge",
            "sandra_outbox_pending 2",
            "# TYPE sandra_webhook_ack_seconds histogram",
            "sandra_webhook_ack_seconds_bucket{le=\"0.005\"} 1",
            "sandra_webhook_ack_seconds_count 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert_eq!(m.value("sends_ok"), Some(3.0));
    }

    #[test]
    fn two_instances_count_apart() {
        let (a, b) = (Metrics::default(), Metrics::default());
        Metrics::inc(&a.webhooks_accepted);
        assert_eq!(a.value("webhooks_accepted"), Some(1.0));
        assert_eq!(b.value("webhooks_accepted"), Some(0.0));
    }
}
