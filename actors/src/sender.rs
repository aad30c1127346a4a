//! The sender: the only actor that sends to the Graph API (one per business number).
//!
//! - Owns: the pacing state (a sliding one-second window for the number's throughput, a sliding
//!   window per recipient for Meta's pair rate limit), the set of sends in flight, and the
//!   best-effort queue of typing indicators.
//! - Takes: [`SenderMsg::Kick`] (new replies are in the outbox), [`SenderMsg::Typing`],
//!   [`SenderMsg::Tick`] (its own interval: retries and paced sends), [`SenderMsg::Done`] (a send
//!   task finished), [`SenderMsg::Spoken`] (a voice record's note is ready, or cannot be made),
//!   [`SenderMsg::TokenReplaced`].
//! - Supervised by: the root supervisor; on a crash it is re-created and resumes from the outbox.
//! - Never: awaits the network in a handler (each send is a spawned task reporting back with
//!   `Done`), sends a record twice concurrently, sends out of order to one recipient, or retries
//!   what cannot succeed.
//!
//! Durability: replies are in the outbox (sled) before this actor hears of them; the outbox
//! record moves Pending → Sent/Failed in one transaction when the Graph API answers. Meta has no
//! idempotency key, so each message carries `biz_opaque_callback_data = sandra:<id>` and a
//! status webhook for it marks the record sent (see `store::apply_status`). Before each Graph
//! call the record gets `sending_since_ms`, made durable (one small transaction, then a group
//! `sync`) before the call starts; the call's outcome clears it. A record found with it after a
//! crash (of this actor or of the process) is not sent again until `reconcile_wait` has passed
//! since that time, so the status webhook of a send Meta took can settle it first. After a call
//! whose outcome is unknown (a timeout, a connection lost after the request was written: see
//! `GraphError::outcome_unknown`) the retry waits `reconcile_wait` for the same reason.
//!
//! Voice records are spoken before they take a Graph-call slot: speaking a reply takes seconds,
//! and a slot held that long would slow every other send (the pacing counts calls in flight).
//! The note waits in memory for its slot; it is never stored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::Rng;

use crate::graph::{ErrorClass, GraphClient, GraphError};
use crate::metrics::Metrics;
use crate::slot::ActorSlot;
use crate::speech::SpeechMsg;
use crate::store::{OutboundBody, OutboxRecord, OutboxState, Store, now_ms};
use sandra_models::speech::VoiceNote;

pub type SenderRef = ActorRef<SenderMsg>;

/// Meta's per-message text limit.
pub const MAX_TEXT_CHARS: usize = 4096;

pub enum SenderMsg {
    /// New records are waiting in the outbox.
    Kick,
    /// Periodic pump: retries whose time has come, sends the pacing held back.
    Tick,
    /// Mark an inbound message read and, with `typing`, show the typing indicator (best
    /// effort).
    Typing { wamid: String, typing: bool },
    /// A send task finished.
    Done {
        id: u64,
        recipient: String,
        result: Result<String, GraphError>,
    },
    /// A voice record's note was spoken (it waits for a slot), or could not be made (the
    /// attempt's outcome, as a send's).
    Spoken {
        id: u64,
        recipient: String,
        result: Result<VoiceNote, GraphError>,
    },
    /// A typing call finished.
    TypingDone(Result<(), GraphError>),
    /// The operator replaced the access token (in the shared [`crate::secret::Credentials`]
    /// every Graph client reads): resume after a 190.
    TokenReplaced,
}

/// Pacing and retry policy. The binary's config module reads it from `[sender]` in
/// config.toml, where its defaults are written (once); this type has none.
#[derive(Debug, Clone)]
pub struct Pacing {
    /// Graph calls per second for the business number (Meta: 80 by default, up to 1000).
    pub rate_per_second: u32,
    /// At most this many messages to one recipient within `recipient_window`.
    pub recipient_burst: u32,
    pub recipient_window: Duration,
    /// Sends in flight at once.
    pub max_in_flight: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Attempts before a transiently failing message is given up (and recorded as failed).
    pub max_attempts: u32,
    /// After a send whose outcome is unknown, wait this long for a status webhook before
    /// sending again.
    pub reconcile_wait: Duration,
}

/// How often the sender looks for work that became due (backoffs, pacing slots, reconcile
/// waits). Not a setting: it only bounds how late such work starts.
const TICK: Duration = Duration::from_millis(100);

/// What `/readyz` and logs need to know about the sender.
#[derive(Debug, Default)]
pub struct SenderHealth {
    /// Set on error 190; cleared when the token is replaced.
    pub token_invalid: AtomicBool,
}

#[derive(Clone)]
pub struct SenderArgs {
    pub store: Arc<Store>,
    pub graph: GraphClient,
    pub metrics: Arc<Metrics>,
    pub pacing: Pacing,
    pub health: Arc<SenderHealth>,
    /// Sent once per closed window when a reply is held; `None`: held replies just wait.
    pub reopen_template: Option<ReopenTemplate>,
    /// Where voice records are spoken (`None`: no voice installed, so a voice record that
    /// somehow exists fails at once; its text went as its own record).
    pub speech: Option<ActorSlot<SpeechMsg>>,
    /// How long one voice record may wait for its note to be spoken before the attempt counts
    /// as a transient failure (`voice.timeout`).
    pub speech_timeout: Duration,
}

/// An approved template without parameters that invites the user to write again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReopenTemplate {
    pub name: String,
    /// Its language code, e.g. `en_US`.
    pub language: String,
}

#[derive(Clone, Copy)]
pub struct Sender;

pub struct SenderState {
    args: SenderArgs,
    /// Completion times of Graph calls in the last second. A call holds a slot from the moment
    /// it starts until one second after it completes, so however the network delays calls,
    /// Meta can never receive more than `rate_per_second` within any one second.
    window: VecDeque<Instant>,
    /// Graph calls started and not yet completed (sends and typing indicators).
    calls_in_flight: usize,
    /// Completion times of sends per recipient within `recipient_window` (one send per
    /// recipient is in flight at a time, so the same argument holds per recipient).
    per_recipient: HashMap<String, VecDeque<Instant>>,
    in_flight: HashSet<u64>,
    busy_recipients: HashSet<String>,
    typing: VecDeque<(String, bool)>,
    typing_in_flight: usize,
    /// Pending outbox records, oldest first: reloaded from the store on `Kick` and at most once
    /// a second on `Tick`, so a busy sender does not re-read the outbox after every send.
    cache: Vec<OutboxRecord>,
    /// Voice records being spoken (no slot held; their recipient counts as busy).
    speaking: HashSet<u64>,
    /// Voice notes spoken and waiting for a slot to be uploaded and sent (memory only).
    spoken: HashMap<u64, VoiceNote>,
    last_reload: Option<Instant>,
}

impl Actor for Sender {
    type Msg = SenderMsg;
    type State = SenderState;
    type Arguments = SenderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SenderMsg>,
        args: SenderArgs,
    ) -> Result<SenderState, ActorProcessingErr> {
        myself.send_interval(TICK, || SenderMsg::Tick);
        Ok(SenderState {
            args,
            window: VecDeque::new(),
            calls_in_flight: 0,
            per_recipient: HashMap::new(),
            in_flight: HashSet::new(),
            busy_recipients: HashSet::new(),
            typing: VecDeque::new(),
            typing_in_flight: 0,
            cache: Vec::new(),
            last_reload: None,
            speaking: HashSet::new(),
            spoken: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SenderMsg>,
        msg: SenderMsg,
        state: &mut SenderState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SenderMsg::Kick => pump(&myself, state, true),
            SenderMsg::Tick => {
                let stale = state
                    .last_reload
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                if stale {
                    prune_recipients(state, Instant::now());
                }
                pump(&myself, state, stale);
            }
            // Playground messages get no read receipt and no typing indicator.
            SenderMsg::Typing { wamid, .. } if crate::playground::is_local_id(&wamid) => {}
            SenderMsg::Typing { wamid, typing } => {
                if state.typing.len() >= 256 {
                    state.typing.pop_front();
                }
                state.typing.push_back((wamid, typing));
                pump(&myself, state, false);
            }
            SenderMsg::TypingDone(result) => {
                state.typing_in_flight -= 1;
                call_completed(state);
                match result {
                    Ok(()) => Metrics::inc(&state.args.metrics.typing_sent),
                    Err(e) => {
                        if e.class() == ErrorClass::TokenInvalid {
                            token_invalid(state, &e);
                        }
                        tracing::debug!(error = %e, "typing indicator failed (ignored)");
                    }
                }
            }
            SenderMsg::Done {
                id,
                recipient,
                result,
            } => {
                state.in_flight.remove(&id);
                state.busy_recipients.remove(&recipient);
                call_completed(state);
                state
                    .per_recipient
                    .entry(recipient.clone())
                    .or_default()
                    .push_back(Instant::now());
                settle(state, id, &recipient, result);
                pump(&myself, state, false);
            }
            SenderMsg::Spoken {
                id,
                recipient,
                result,
            } => {
                state.speaking.remove(&id);
                state.busy_recipients.remove(&recipient);
                match result {
                    Ok(note) => {
                        state.spoken.insert(id, note);
                    }
                    // Nothing reached Meta: the attempt ends here, as a send that failed would.
                    Err(e) => settle(state, id, &recipient, Err(e)),
                }
                pump(&myself, state, false);
            }
            SenderMsg::TokenReplaced => {
                // The token itself is already in the shared credentials; only the pause ends.
                if state
                    .args
                    .health
                    .token_invalid
                    .swap(false, Ordering::SeqCst)
                {
                    state.args.metrics.token_invalid.set(0.0);
                    tracing::info!("access token replaced; sending resumes");
                }
                pump(&myself, state, true);
            }
        }
        Ok(())
    }
}

/// Records an attempt's outcome and keeps the cache in step with it.
fn settle(state: &mut SenderState, id: u64, recipient: &str, result: Result<String, GraphError>) {
    match finish_send(state, id, recipient, result) {
        Ok(Some(rec)) if rec.state == OutboxState::Pending => {
            if let Some(slot) = state.cache.iter_mut().find(|r| r.id == id) {
                *slot = rec;
            }
        }
        Ok(_) => state.cache.retain(|r| r.id != id),
        Err(e) => tracing::error!(id, error = %e, "recording a send outcome failed"),
    }
}

fn token_invalid(state: &mut SenderState, e: &GraphError) {
    if !state.args.health.token_invalid.swap(true, Ordering::SeqCst) {
        state.args.metrics.token_invalid.set(1.0);
        tracing::error!(error = %e, "the WhatsApp access token is invalid or expired (error 190): sending is paused until it is replaced");
    }
}

/// Takes a Graph-call slot, if one is free (see `SenderState::window`).
fn take_slot(state: &mut SenderState, now: Instant) -> bool {
    while state
        .window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        state.window.pop_front();
    }
    if state.window.len() + state.calls_in_flight
        < state.args.pacing.rate_per_second.max(1) as usize
    {
        state.calls_in_flight += 1;
        true
    } else {
        false
    }
}

/// Gives back a slot taken for a call that did not start.
fn release_slot(state: &mut SenderState) {
    state.calls_in_flight = state.calls_in_flight.saturating_sub(1);
}

fn call_completed(state: &mut SenderState) {
    state.calls_in_flight = state.calls_in_flight.saturating_sub(1);
    state.window.push_back(Instant::now());
}

/// Forgets recipients with no send inside their window, so the map holds only recent ones.
fn prune_recipients(state: &mut SenderState, now: Instant) {
    let window = state.args.pacing.recipient_window;
    state.per_recipient.retain(|_, q| {
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        !q.is_empty()
    });
}

fn recipient_allows(state: &mut SenderState, recipient: &str, now: Instant) -> bool {
    let p = &state.args.pacing;
    let q = state
        .per_recipient
        .entry(recipient.to_string())
        .or_default();
    while q
        .front()
        .is_some_and(|t| now.duration_since(*t) >= p.recipient_window)
    {
        q.pop_front();
    }
    q.len() < p.recipient_burst.max(1) as usize
}

fn pump(myself: &ActorRef<SenderMsg>, state: &mut SenderState, reload: bool) {
    if state.args.health.token_invalid.load(Ordering::SeqCst) {
        // Meta refused the token; the playground needs none.
        pump_local_only(state, reload);
        return;
    }
    let now = Instant::now();
    // Typing indicators first: they are cheap and time-sensitive, and share the budget.
    while state.typing_in_flight < 8 && !state.typing.is_empty() && take_slot(state, now) {
        let (wamid, typing) = state.typing.pop_front().expect("checked non-empty");
        state.typing_in_flight += 1;
        let graph = state.args.graph.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let r = graph.mark_read(&wamid, typing).await;
            let _ = me.cast(SenderMsg::TypingDone(r));
        });
    }
    if state.in_flight.len() >= state.args.pacing.max_in_flight {
        return;
    }
    if reload {
        match state.args.store.outbox_pending(4096) {
            Ok(p) => {
                state.cache = p;
                state.last_reload = Some(now);
                // Notes of records settled meanwhile (a status webhook) are not needed.
                let cache = &state.cache;
                state
                    .spoken
                    .retain(|id, _| cache.iter().any(|r| r.id == *id));
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                return;
            }
        }
    }
    let now_wall = now_ms();
    // Recipients with an earlier message still waiting: later ones must not overtake it.
    let mut blocked: HashSet<String> = HashSet::new();
    // Records settled during this pass (held, or reconciled by a status webhook).
    let mut settled: HashSet<u64> = HashSet::new();
    let mut i = 0;
    while i < state.cache.len() {
        if state.in_flight.len() >= state.args.pacing.max_in_flight {
            break;
        }
        let reconcile_ms = state.args.pacing.reconcile_wait.as_millis() as i64;
        let (id, recipient, next_at) = {
            let r = &state.cache[i];
            // A send that was under way when we crashed: give its status webhook time to
            // settle the record before sending again.
            let marked = r.sending_since_ms.map_or(i64::MIN, |t| t + reconcile_ms);
            (
                r.id,
                r.target.recipient_key(),
                r.next_attempt_at_ms.max(marked),
            )
        };
        i += 1;
        if state.in_flight.contains(&id)
            || blocked.contains(&recipient)
            || state.busy_recipients.contains(&recipient)
            || next_at > now_wall
        {
            blocked.insert(recipient);
            continue;
        }
        if crate::playground::is_local_target(&state.cache[i - 1].target) {
            // Playground replies go to the in-process hub: no Graph call, no pacing, no window.
            let mut rec = state.cache[i - 1].clone();
            deliver_local(state, &mut rec);
            settled.insert(id);
            continue;
        }
        if let Some(reason) = window_closed(state, &state.cache[i - 1], now_wall) {
            let mut rec = state.cache[i - 1].clone();
            if let Err(e) = hold(state, &mut rec, reason, now_wall) {
                tracing::error!(id, error = %e, "recording a held message failed");
            }
            settled.insert(id);
            continue;
        }
        if !recipient_allows(state, &recipient, now) {
            blocked.insert(recipient);
            continue;
        }
        if let OutboundBody::Voice { text, language } = &state.cache[i - 1].body
            && !state.spoken.contains_key(&id)
        {
            // Spoken first, without a slot (see the module's doc); the recipient waits.
            state.speaking.insert(id);
            state.busy_recipients.insert(recipient.clone());
            blocked.insert(recipient.clone());
            let (speech, timeout) = (state.args.speech.clone(), state.args.speech_timeout);
            let (text, language) = (text.clone(), language.clone());
            let me = myself.clone();
            tokio::spawn(async move {
                let result = speak(speech.as_ref(), timeout, &text, &language).await;
                let _ = me.cast(SenderMsg::Spoken {
                    id,
                    recipient,
                    result,
                });
            });
            continue;
        }
        if !take_slot(state, now) {
            break;
        }
        // Mark the record as being sent (this also re-reads it: the cache may be stale, and a
        // status webhook can have settled it meanwhile).
        let rec = match state.args.store.mark_sending(id, now_wall) {
            Ok(Some(fresh)) => fresh,
            Ok(None) => {
                release_slot(state);
                settled.insert(id);
                continue;
            }
            Err(e) => {
                release_slot(state);
                tracing::error!(id, error = %e, "marking a send failed; will retry");
                break;
            }
        };
        tracing::debug!(id, %recipient, attempt = rec.attempts + 1, "sending");
        state.in_flight.insert(id);
        state.busy_recipients.insert(recipient.clone());
        blocked.insert(recipient.clone());
        let graph = state.args.graph.clone();
        let store = state.args.store.clone();
        let me = myself.clone();
        // A voice record reaches this point only with its note spoken.
        let note = state.spoken.remove(&id);
        tokio::spawn(async move {
            // The marker must be on disk before Meta can have the message.
            let result = match store.sync().await {
                Ok(()) => match (&rec.body, note) {
                    (OutboundBody::Voice { .. }, Some(note)) => {
                        tracing::debug!(
                            id = rec.id,
                            seconds = note.seconds,
                            bytes = note.ogg.len(),
                            "uploading a spoken voice note"
                        );
                        graph.send_voice(&rec, note.ogg).await
                    }
                    (OutboundBody::Voice { .. }, None) => {
                        Err(GraphError::not_sent("the voice note was not spoken", true))
                    }
                    _ => graph.send(&rec).await,
                },
                Err(e) => Err(GraphError {
                    http_status: None,
                    code: None,
                    subcode: None,
                    message: format!("not sent: storing the send marker failed: {e}"),
                    details: None,
                    retry_after: None,
                    outcome_unknown: false,
                }),
            };
            let _ = me.cast(SenderMsg::Done {
                id: rec.id,
                recipient,
                result,
            });
        });
    }
    if !settled.is_empty() {
        state.cache.retain(|r| !settled.contains(&r.id));
    }
}

/// Speaks a voice record's text (the speech actor). A note that cannot be made is a permanent
/// failure (no voice for the language, nothing speakable) or a transient one (the speech actor
/// restarting, a timeout); the reply's text is its own record either way, so the user never
/// misses the answer.
async fn speak(
    speech: Option<&ActorSlot<SpeechMsg>>,
    timeout: Duration,
    text: &str,
    language: &str,
) -> Result<VoiceNote, GraphError> {
    let Some(slot) = speech else {
        return Err(GraphError::not_sent("no voice is installed", false));
    };
    let Some(actor) = slot.try_get() else {
        return Err(GraphError::not_sent(
            "the speech actor is not running",
            true,
        ));
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if actor
        .cast(SpeechMsg::Speak {
            text: text.to_string(),
            language: language.to_string(),
            reply: tx,
        })
        .is_err()
    {
        return Err(GraphError::not_sent(
            "the speech actor is not running",
            true,
        ));
    }
    match tokio::time::timeout(timeout, rx).await {
        Err(_) => Err(GraphError::not_sent("speaking the reply timed out", true)),
        Ok(Err(_)) => Err(GraphError::not_sent("the speech job was dropped", true)),
        Ok(Ok(Err(unspoken))) => Err(GraphError::not_sent(
            &format!("voice note not made: {}", unspoken.reason),
            unspoken.retry,
        )),
        Ok(Ok(Ok(note))) => Ok(note),
    }
}

/// While sending to Meta is paused: playground replies still go out.
fn pump_local_only(state: &mut SenderState, reload: bool) {
    if reload {
        match state.args.store.outbox_pending(4096) {
            Ok(p) => {
                state.cache = p;
                state.last_reload = Some(Instant::now());
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                return;
            }
        }
    }
    let local: Vec<OutboxRecord> = state
        .cache
        .iter()
        .filter(|r| crate::playground::is_local_target(&r.target))
        .cloned()
        .collect();
    for mut rec in local {
        deliver_local(state, &mut rec);
        state.cache.retain(|r| r.id != rec.id);
    }
}

/// Records a playground reply as sent, then hands it to the hub (recorded first: a crash in
/// between loses one local reply rather than showing it twice).
fn deliver_local(state: &SenderState, rec: &mut OutboxRecord) {
    let text = match &rec.body {
        OutboundBody::Text { body } => Some(body.clone()),
        OutboundBody::Template { name, .. } => Some(format!("[template {name}]")),
        // The playground shows text; the reply's text is its own record.
        OutboundBody::Voice { .. } => None,
    };
    rec.state = OutboxState::Sent;
    rec.attempts += 1;
    rec.wamid = Some(format!("{}out:{}", crate::playground::LOCAL_PREFIX, rec.id));
    if let Err(e) = state.args.store.update_outbox(rec) {
        tracing::error!(id = rec.id, error = %e, "recording a playground reply failed");
        return;
    }
    Metrics::inc(&state.args.metrics.sends_ok);
    let recipient = rec.target.phone.clone().unwrap_or_default();
    if let Some(text) = text {
        state.args.graph.local().deliver(&recipient, text);
    }
}

/// Holds a reply the closed window keeps from being sent (until the user writes again), and
/// queues the reopen template, once per closed window, when one is configured.
fn hold(
    state: &SenderState,
    rec: &mut OutboxRecord,
    reason: String,
    now_ms: i64,
) -> Result<(), crate::store::StoreError> {
    rec.state = OutboxState::Held {
        reason,
        since_ms: now_ms,
    };
    rec.sending_since_ms = None;
    let reopen = state
        .args
        .reopen_template
        .as_ref()
        .map(|t| crate::store::NewOutbound {
            target: rec.target.clone(),
            body: crate::store::OutboundBody::Template {
                name: t.name.clone(),
                language: t.language.clone(),
            },
            context_message_id: None,
            // Templates are allowed outside the window.
            window_expires_at: None,
        });
    Metrics::inc(&state.args.metrics.sends_held);
    if let Some(template) = state.args.store.hold_reply(rec, reopen.as_ref())? {
        tracing::info!(id = rec.id, template, key = %rec.key, "reply held (window closed); reopen template queued");
    } else {
        tracing::info!(id = rec.id, key = %rec.key, "reply held until the user writes again (window closed)");
    }
    Ok(())
}

/// Why a free-form message must not be sent now, if it must not.
fn window_closed(state: &SenderState, rec: &OutboxRecord, now_ms: i64) -> Option<String> {
    let expires = rec.window_expires_at?;
    if now_ms / 1000 >= expires {
        return Some("the 24-hour customer-service window had closed; not attempted".into());
    }
    let opened = expires - 24 * 3600;
    match state.args.store.window_closed_at(&rec.key) {
        Ok(Some(closed)) if closed >= opened => {
            Some("Meta reported the 24-hour window closed (131047); not attempted".into())
        }
        _ => None,
    }
}

fn backoff(p: &Pacing, attempts: u32, retry_after: Option<Duration>) -> Duration {
    let exp = p
        .backoff_base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(p.backoff_max);
    // Full jitter on the upper half keeps retries of many messages from lining up.
    let half = exp / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
    let d = half + Duration::from_millis(jitter);
    retry_after.map_or(d, |r| r.max(d.min(r * 2)))
}

fn finish_send(
    state: &mut SenderState,
    id: u64,
    recipient: &str,
    result: Result<String, GraphError>,
) -> Result<Option<OutboxRecord>, crate::store::StoreError> {
    let Some(mut rec) = state.args.store.outbox_record(id)? else {
        return Ok(None);
    };
    if rec.state != OutboxState::Pending {
        // A status webhook reconciled it meanwhile.
        return Ok(Some(rec));
    }
    // The outcome is known: the record no longer needs reconciling before its next send.
    rec.sending_since_ms = None;
    let m = &state.args.metrics;
    match result {
        Ok(wamid) => {
            rec.attempts += 1;
            rec.state = OutboxState::Sent;
            rec.wamid = Some(wamid);
            rec.last_error = None;
            Metrics::inc(&m.sends_ok);
        }
        Err(e) => {
            let class = e.class();
            rec.last_error = Some(e.to_string());
            match class {
                ErrorClass::TokenInvalid => {
                    // Not the message's fault: it stays pending, untouched, until the token works.
                    token_invalid(state, &e);
                }
                ErrorClass::WindowClosed => {
                    rec.attempts += 1;
                    state.args.store.close_window(&rec.key, now_ms() / 1000)?;
                    // Held, not lost: sent when the user writes again.
                    let reason = "Meta refused it: the 24-hour window is closed (131047)";
                    hold(state, &mut rec, reason.into(), now_ms())?;
                    return Ok(Some(rec));
                }
                ErrorClass::Permanent => {
                    rec.attempts += 1;
                    rec.state = OutboxState::Failed {
                        code: e.code,
                        reason: e.details.clone().unwrap_or_else(|| e.message.clone()),
                    };
                    tracing::warn!(id, code = ?e.code, error = %e, "message failed permanently");
                    Metrics::inc(&m.sends_failed);
                }
                ErrorClass::Retry => {
                    rec.attempts += 1;
                    if rec.attempts >= state.args.pacing.max_attempts {
                        rec.state = OutboxState::Failed {
                            code: e.code,
                            reason: format!("gave up after {} attempts: {e}", rec.attempts),
                        };
                        Metrics::inc(&m.sends_failed);
                    } else {
                        let p = &state.args.pacing;
                        let mut wait = backoff(p, rec.attempts, e.retry_after);
                        if e.outcome_unknown {
                            wait = wait.max(p.reconcile_wait);
                        }
                        if e.code == Some(131056) {
                            // Pair rate limit: hold this recipient back as well.
                            let now = Instant::now();
                            let q = state
                                .per_recipient
                                .entry(recipient.to_string())
                                .or_default();
                            for _ in 0..p.recipient_burst {
                                q.push_back(now);
                            }
                        }
                        rec.next_attempt_at_ms = now_ms() + wait.as_millis() as i64;
                        Metrics::inc(&m.sends_retried);
                        tracing::info!(id, code = ?e.code, attempt = rec.attempts, wait_ms = wait.as_millis() as u64, "send failed transiently; will retry");
                    }
                }
            }
        }
    }
    if matches!(rec.body, OutboundBody::Voice { .. }) {
        let m = &state.args.metrics;
        match &rec.state {
            OutboxState::Sent => Metrics::inc(&m.voice_notes_sent),
            OutboxState::Failed { reason, .. } => {
                // Its text went as its own record: only the voice is lost.
                tracing::warn!(id, %reason, "voice reply given up; its text was sent on its own");
                Metrics::inc(&m.voice_notes_failed);
            }
            _ => {}
        }
    }
    state.args.store.update_outbox(&rec)?;
    Ok(Some(rec))
}

/// Splits a reply into WhatsApp-sized messages (≤ `max` characters each), preferring paragraph
/// breaks, then line breaks, then sentence ends, then spaces; hard-cuts only unbroken text.
pub fn split_message(text: &str, max: usize) -> Vec<String> {
    // A zero limit would cut nothing off and loop forever (found by fuzzing): one character is
    // the smallest part there is.
    let max = max.max(1);
    let mut out = Vec::new();
    let mut rest = text.trim();
    while rest.chars().count() > max {
        let cut_byte = rest
            .char_indices()
            .nth(max)
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let head = &rest[..cut_byte];
        let min_keep = head.len() / 2;
        let at = ["\n\n", "\n", ". ", "! ", "? ", "。", " "]
            .iter()
            .filter_map(|sep| {
                head.rfind(sep)
                    .filter(|i| *i >= min_keep)
                    .map(|i| i + sep.len())
            })
            .next()
            .unwrap_or(cut_byte);
        out.push(rest[..at].trim_end().to_string());
        rest = rest[at..].trim_start();
    }
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_with_a_zero_limit_ends_in_one_character_parts() {
        assert_eq!(split_message("ab c", 0), vec!["a", "b", "c"]);
    }

    #[test]
    fn split_prefers_paragraphs_and_respects_the_limit() {
        let para = "a".repeat(3000);
        let text = format!("{para}\n\n{para}\n\n{para}");
        let parts = split_message(&text, 4096);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p == &para));
        let sentences = "Hello there. ".repeat(1000);
        let parts = split_message(&sentences, 4096);
        assert!(
            parts
                .iter()
                .all(|p| p.chars().count() <= 4096 && p.ends_with('.'))
        );
        assert_eq!(
            parts.concat().replace(' ', "").len(),
            sentences.replace(' ', "").len()
        );
        let unbroken = "é".repeat(9000);
        let parts = split_message(&unbroken, 4096);
        assert_eq!(
            parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            vec![4096, 4096, 808]
        );
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let p = Pacing {
            rate_per_second: 80,
            recipient_burst: 3,
            recipient_window: Duration::from_secs(18),
            max_in_flight: 32,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(600),
            max_attempts: 12,
            reconcile_wait: Duration::from_secs(30),
        };
        let b1 = backoff(&p, 1, None);
        let b5 = backoff(&p, 5, None);
        assert!(b1 <= p.backoff_base && b1 >= p.backoff_base / 2);
        assert!(b5 >= p.backoff_base * 8);
        assert!(backoff(&p, 1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        assert!(backoff(&p, 30, None) <= p.backoff_max);
    }
}
