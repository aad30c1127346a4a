//! The conversation actor: one per chat ([`ConversationKey`]), holding that chat's session.
//!
//! - Owns: the [`SessionState`] (loaded from the store in `pre_start`, replaced after every
//!   committed turn) and the chat's unanswered messages (`pending`), which mirror the inbox.
//! - Takes: [`ConversationMsg::Inbound`] from the router, [`ConversationMsg::Heard`] and
//!   [`ConversationMsg::TurnDone`] from its own turn task, [`ConversationMsg::Passivate`] from the
//!   router's idle sweep.
//! - Reports: [`ConversationReport`] to whoever spawned it (the router), through a derived ref,
//!   so this module does not know the router.
//! - Supervised by: the router, which spawns it (unnamed), restarts it from the store when it
//!   fails, and passivates it when idle.
//! - Never: blocks (the turn runs in a task and reports back as messages), talks to the Graph
//!   API itself (replies go through the outbox and the sender), or returns `Err` for a domain
//!   failure (a brain error becomes an apology). It returns `Err` only when its turn task
//!   *panicked*, so the router restarts it from its stored state.
//!
//! A turn is three steps, two of them pure: [`plan::plan`] decides what each message gets,
//! [`run::spawn`] hears voice notes and asks the brain, [`commit::commit`] builds the next
//! session and the replies, which are stored in one transaction.
//!
//! Exactly-once: a message stays in the store's inbox until the transaction that stores the
//! reply in the outbox and the new session state also removes it. A crash before that replays
//! it (the next incarnation reloads the inbox in `pre_start`); a crash after never does. Each
//! turn first counts an attempt on its records durably; a record that already had
//! `max_attempts` (a poison message, even one that kills the process) is dead-lettered with one
//! apology instead (see `Store::begin_attempt`).
//! Messages are answered in timestamp order; messages that arrive while a turn is in progress are
//! answered together in the next turn.

pub mod commit;
pub mod mention;
pub mod plan;
pub mod run;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorProcessingErr, ActorRef, DerivedActorRef};

use crate::accounts::AccountPolicy;
use crate::brain::{BrainError, BrainReply, UserInput};
use crate::limits::{Limits, Verdict};
use crate::metrics::Metrics;
use crate::sender::SenderMsg;
use crate::session::SessionState;
use crate::store::{InboxRecord, NewOutbound, OutboundBody, Store, now_ms, refresh_target};
use crate::texts::{self, Lang};
use crate::whatsapp::{Content, ConversationKey};

pub use plan::UNHEARD_VOICE_NOTE;
use plan::{Plan, PlanContext, PlanEvent};
pub use run::RunDeps;

pub type ConversationRef = ActorRef<ConversationMsg>;

/// How conversations behave (from `[conversation]` in config.toml, whose defaults live in the
/// binary's config module).
#[derive(Debug, Clone)]
pub struct ConversationPolicy {
    /// The name users address Sandra by in groups ("@Sandra", "Sandra, ...").
    pub bot_name: String,
    /// Turns kept verbatim in the session (older ones are dropped; the LLM brain summarises).
    pub max_history_turns: usize,
    /// Show the typing indicator while the brain works (1:1 chats only; groups cannot).
    pub typing_indicator: bool,
    /// Give up on a turn (voice notes, files and brain) when no model work finished anywhere
    /// for this long: the models are stuck (see [`run::Patience`]).
    pub brain_timeout: Duration,
    /// And give up on a turn that waited this long in all, however busy the models are.
    pub max_wait: Duration,
    /// 1:1 chats: a turn not answered after this long gets one "got it" notice first (zero:
    /// never).
    pub wait_notice_after: Duration,
    /// Groups: at most this many turns of history are kept and shown to the brain.
    pub group_context_messages: usize,
    /// Groups: and at most this many characters in all (the oldest turns go first).
    pub group_context_chars: usize,
    /// Offer linking by email once, in the first reply to a new 1:1 chat.
    pub offer_linking: bool,
}

/// What every conversation shares: built once, held by the router, handed to each spawn.
pub struct ConversationDeps {
    pub store: Arc<Store>,
    pub run: RunDeps,
    pub metrics: Arc<Metrics>,
    pub policy: ConversationPolicy,
    /// Allow/block lists, per-sender rates and per-turn caps, shared by every conversation.
    pub limits: Arc<Limits>,
    /// Turns a message may start (crashes included) before it is dead-lettered with an apology.
    pub max_attempts: u32,
    /// When and in which languages replies are also spoken (`[voice]`).
    pub voice: commit::VoicePolicy,
}

/// What a conversation tells its supervisor.
pub enum ConversationReport {
    /// Asked to passivate while busy: it keeps running.
    PassivateDeclined(ConversationKey),
}

#[derive(Clone)]
pub struct ConversationArgs {
    pub key: ConversationKey,
    pub deps: Arc<ConversationDeps>,
    pub report: DerivedActorRef<ConversationReport>,
}

pub enum ConversationMsg {
    /// A newly accepted (or replayed) message for this chat.
    Inbound(Box<InboxRecord>),
    /// The turn's voice notes are resolved: the inputs with transcripts, and notes for the user
    /// (what could not be heard, what was cut).
    Heard {
        inputs: Vec<UserInput>,
        notes: Vec<String>,
        /// What Whisper heard the voice notes in (ISO 639-1), when it says.
        language: Option<String>,
    },
    /// The turn's code mail was sent (or not: `Err(refused)` says whether the server refused it
    /// for good or could not be reached).
    Mailed(Result<(), bool>),
    /// The turn task finished (or panicked: `None`).
    TurnDone(Option<Result<BrainReply, BrainError>>),
    /// The turn numbered so ([`ConversationState::turns_started`]) was started
    /// `wait_notice_after` ago: if it is still in flight, tell the user it is coming.
    WaitNotice(u64),
    /// Retry committing after a storage error, or start the next turn (what waited behind the
    /// batch cap, or an attempt that could not be recorded).
    RetryCommit,
    /// The router's idle sweep: stop if nothing is pending, else decline.
    Passivate,
}

pub struct Conversation;

/// A turn in progress: its plan, and the session it started from.
struct InFlight {
    base: SessionState,
    plan: Plan,
    /// Which turn this is, so a late [`ConversationMsg::WaitNotice`] for an earlier one is
    /// ignored.
    number: u64,
    /// The language Whisper heard this turn's voice notes in (a voice reply speaks it).
    heard_language: Option<String>,
}

pub struct ConversationState {
    args: ConversationArgs,
    session: Option<SessionState>,
    /// Unanswered messages by (timestamp, seq): timestamp order, then arrival order.
    pending: BTreeMap<(i64, u64), InboxRecord>,
    in_flight: Option<InFlight>,
    /// A finished turn whose commit failed, waiting for `RetryCommit`.
    uncommitted: Option<(InFlight, Option<BrainReply>)>,
    /// Turns started by this incarnation: numbers them for [`ConversationMsg::WaitNotice`].
    turns_started: u64,
}

impl ConversationState {
    fn deps(&self) -> &ConversationDeps {
        &self.args.deps
    }
}

impl ractor::Actor for Conversation {
    type Msg = ConversationMsg;
    type State = ConversationState;
    type Arguments = ConversationArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConversationArgs,
    ) -> Result<ConversationState, ActorProcessingErr> {
        let session = args.deps.store.load_session(&args.key)?;
        let mut pending = BTreeMap::new();
        for rec in args.deps.store.unfinished_for(&args.key)? {
            pending.insert((rec.message.timestamp, rec.seq), rec);
        }
        Metrics::inc(&args.deps.metrics.conversations_spawned);
        tracing::debug!(key = %args.key, restored = session.is_some(), pending = pending.len(), "conversation started");
        Ok(ConversationState {
            args,
            session,
            pending,
            in_flight: None,
            uncommitted: None,
            turns_started: 0,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut ConversationState,
    ) -> Result<(), ActorProcessingErr> {
        start_turn(&myself, state).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ConversationMsg,
        state: &mut ConversationState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConversationMsg::Inbound(rec) => {
                let seq = rec.seq;
                let known = state.pending.values().any(|r| r.seq == seq)
                    || state
                        .in_flight
                        .as_ref()
                        .is_some_and(|f| f.plan.records.iter().any(|r| r.seq == seq));
                // The inbox is the truth: a record no longer there was already answered.
                let unfinished = match state.deps().store.is_unfinished(seq) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::error!(key = %state.args.key, error = %e, "inbox lookup failed");
                        true
                    }
                };
                if !known && unfinished {
                    state.pending.insert((rec.message.timestamp, seq), *rec);
                    start_turn(&myself, state).await;
                }
            }
            ConversationMsg::Heard {
                inputs,
                notes,
                language,
            } => {
                if let Some(flight) = state.in_flight.as_mut() {
                    flight.plan.inputs = inputs;
                    flight.plan.direct.extend(notes);
                    flight.heard_language = language;
                }
            }
            ConversationMsg::Mailed(outcome) => {
                if let Some(flight) = state.in_flight.as_mut() {
                    let lang = flight.plan.lang;
                    match outcome {
                        Ok(()) => {
                            Metrics::inc(&state.args.deps.metrics.link_codes_mailed);
                            let to = flight.plan.mail.as_ref().map(|m| m.to.as_str());
                            flight.plan.direct.push(texts::code_sent(
                                lang,
                                &crate::accounts::mask_email(to.unwrap_or_default()),
                                AccountPolicy::STANDARD.code_lifetime_ms / 60_000,
                            ));
                        }
                        Err(refused) => {
                            Metrics::inc(&state.args.deps.metrics.link_mail_failures);
                            if let (Some(id), Some(m)) =
                                (flight.plan.identity.as_mut(), flight.plan.mail.as_ref())
                            {
                                id.mail_failed(&m.to);
                            }
                            flight.plan.direct.push(texts::mail_failed(lang, refused));
                        }
                    }
                }
            }
            ConversationMsg::TurnDone(Some(outcome)) => {
                let Some(flight) = state.in_flight.take() else {
                    return Ok(());
                };
                let lang = flight.plan.lang;
                let reply = outcome.unwrap_or_else(|e| {
                    tracing::warn!(key = %state.args.key, error = %e, "brain failed; apologising");
                    Metrics::inc(&state.deps().metrics.turns_brain_errors);
                    BrainReply::from(match e {
                        BrainError::Failed(_) => texts::brain_failed(lang),
                    })
                });
                finish_turn(&myself, state, flight, Some(reply)).await;
            }
            ConversationMsg::TurnDone(None) => {
                // The turn task panicked: that is a bug, not a domain error. Fail, so the router
                // restarts this conversation from its stored state (the messages are still in the
                // inbox and will be answered by the next incarnation).
                return Err(
                    format!("brain task panicked in conversation {}", state.args.key).into(),
                );
            }
            ConversationMsg::WaitNotice(number) => {
                let due = state.in_flight.as_ref().is_some_and(|f| f.number == number);
                if due {
                    send_wait_notice(state).await;
                }
            }
            ConversationMsg::RetryCommit => {
                if let Some((flight, reply)) = state.uncommitted.take() {
                    finish_turn(&myself, state, flight, reply).await;
                } else {
                    // Starting an attempt failed to reach the store: try again.
                    start_turn(&myself, state).await;
                }
            }
            ConversationMsg::Passivate => {
                let idle = state.pending.is_empty()
                    && state.in_flight.is_none()
                    && state.uncommitted.is_none();
                if idle {
                    myself.stop(Some("idle".into()));
                } else {
                    let _ = state
                        .args
                        .report
                        .send_message(ConversationReport::PassivateDeclined(
                            state.args.key.clone(),
                        ));
                }
            }
        }
        Ok(())
    }
}

/// Starts answering what is pending, if no turn is in progress: batch, count the attempt,
/// plan, and run (or commit at once when the brain is not needed).
async fn start_turn(myself: &ActorRef<ConversationMsg>, state: &mut ConversationState) {
    if state.in_flight.is_some() || state.uncommitted.is_some() || state.pending.is_empty() {
        return;
    }
    let deps = state.args.deps.clone();
    let taken = plan::take_batch(&mut state.pending, deps.limits.policy().max_batch_inputs);
    let Some(records) = begin_attempt(myself, state, &deps, taken).await else {
        return;
    };
    let base = state.session.clone().unwrap_or_else(|| {
        SessionState::new(state.args.key.clone(), records[0].message.reply_target())
    });
    // The limits are stateful (rates): asked here, so that the planner stays pure.
    let verdicts: Vec<Verdict> = records
        .iter()
        .map(|r| {
            let m = &r.message;
            if matches!(m.content, Content::Membership { .. }) {
                // Meta's notice of who joined or left, not anyone's message: no sender to limit.
                return Verdict::Answer;
            }
            let sender = m
                .from
                .as_deref()
                .or(m.from_user_id.as_deref())
                .unwrap_or("");
            deps.limits.check(sender, m.from.as_deref())
        })
        .collect();
    let answered = answered_messages(&deps.store, &records);
    let cap = |t: String| deps.limits.cap_text(t);
    let new_code = crate::accounts::draw_code;
    let accounts = identity_of(&base, &records).and_then(|key| {
        match deps.store.number_record(&key) {
            Ok(rec) => Some(plan::AccountsContext {
                key,
                record: rec.unwrap_or_default(),
                lookup: deps.store.as_ref(),
                policy: &AccountPolicy::STANDARD,
                mail_enabled: deps.run.mailer.is_some(),
                now_ms: now_ms(),
                new_code: &new_code,
            }),
            Err(e) => {
                // Answered without the account this turn rather than not at all.
                tracing::error!(key = %state.args.key, error = %e, "reading the identity failed");
                None
            }
        }
    });
    let ctx = PlanContext {
        policy: &deps.policy,
        can_hear: deps.run.transcription.is_some(),
        can_see: deps.run.vision.is_some(),
        cap_text: &cap,
        answered: &answered,
        accounts,
    };
    let plan = plan::plan(&base, records, &verdicts, &ctx);
    record_events(state, &plan.events);

    state.turns_started += 1;
    let number = state.turns_started;
    if !plan.needs_brain() {
        // Committed by the handler, like every turn (and without recursing into it from here).
        state.in_flight = Some(InFlight {
            base,
            plan,
            number,
            heard_language: None,
        });
        let _ = myself.cast(ConversationMsg::TurnDone(Some(Ok(BrainReply::default()))));
        return;
    }
    let job = run::TurnJob {
        input: plan.brain_input(&base, jiff::Timestamp::now()),
        voice: plan.voice.clone(),
        look: plan.look.clone(),
        read_for: plan.read_for(&base),
        typing: plan.typing_for(&base, &deps.policy).is_some(),
        lang: plan.lang,
        patience: run::Patience {
            stall: deps.policy.brain_timeout,
            max_wait: deps.policy.max_wait,
        },
        mail: plan.mail.clone(),
    };
    // The notice is timed from the turn's start. 1:1 only: in a group it would be one more
    // message for every member, and a replayed turn whose messages were already told gets none.
    let after = deps.policy.wait_notice_after;
    if !after.is_zero() && !base.is_group && !plan.records.iter().any(|r| r.noticed) {
        myself.send_after(after, move || ConversationMsg::WaitNotice(number));
    }
    state.in_flight = Some(InFlight {
        base,
        plan,
        number,
        heard_language: None,
    });
    run::spawn(myself.clone(), job, deps.run.clone());
}

/// Queues the "got it, answering in a moment" for the turn in flight: through the outbox like
/// any reply, and marked on its messages in the same transaction, so a crash and replay never
/// sends a second one. It is queued before the answer is committed, so it never follows it.
async fn send_wait_notice(state: &mut ConversationState) {
    let deps = state.args.deps.clone();
    let Some(flight) = state.in_flight.as_mut() else {
        return;
    };
    let plan = &flight.plan;
    let newest = plan.records.iter().map(|r| r.message.timestamp).max();
    let last_inbound = flight.base.last_inbound_at.max(newest);
    let notice = NewOutbound {
        target: plan.target.clone(),
        body: OutboundBody::Text {
            body: texts::wait_notice(plan.lang),
        },
        context_message_id: None,
        window_expires_at: last_inbound.map(|t| t + 24 * 3600),
    };
    let seqs: Vec<u64> = plan.records.iter().map(|r| r.seq).collect();
    let queued = match deps.store.commit_notice(&state.args.key, &seqs, &notice) {
        Ok(true) => deps.store.sync().await.map(|()| true),
        other => other,
    };
    match queued {
        Ok(true) => {
            for r in &mut flight.plan.records {
                r.noticed = true;
            }
            Metrics::inc(&deps.metrics.wait_notices);
            kick_sender(&deps);
        }
        Ok(false) => {}
        // Best effort: the answer still comes.
        Err(e) => {
            tracing::warn!(key = %state.args.key, error = %e, "queueing the wait notice failed")
        }
    }
}

/// Counts this attempt durably before any work, so a message that kills the whole process is
/// given up after `max_attempts` instead of replayed forever. Returns the records to answer, or
/// `None` when there is nothing to do now (all dead-lettered, or the store failed: retried).
async fn begin_attempt(
    myself: &ActorRef<ConversationMsg>,
    state: &mut ConversationState,
    deps: &ConversationDeps,
    taken: Vec<InboxRecord>,
) -> Option<Vec<InboxRecord>> {
    let seqs: Vec<u64> = taken.iter().map(|r| r.seq).collect();
    let session = state.session.as_ref();
    let apology = |rec: &InboxRecord| {
        let mut target = session.map_or_else(|| rec.message.reply_target(), |s| s.target.clone());
        refresh_target(&mut target, &rec.message);
        let last = session.and_then(|s| s.last_inbound_at);
        let lang = match &rec.message.content {
            Content::Text { body } => Lang::detect(body),
            _ => None,
        };
        NewOutbound {
            target,
            body: OutboundBody::Text {
                body: texts::poison_apology(lang.unwrap_or_default()),
            },
            context_message_id: Some(rec.message.wamid.clone()),
            window_expires_at: Some(
                last.map_or(rec.message.timestamp, |t| t.max(rec.message.timestamp)) + 24 * 3600,
            ),
        }
    };
    let begun = deps
        .store
        .begin_attempt(&state.args.key, &seqs, deps.max_attempts, apology);
    let attempt = match begun {
        Ok(a) => deps.store.sync().await.map(|()| a),
        Err(e) => Err(e),
    };
    match attempt {
        Ok(a) => {
            if !a.dead_lettered.is_empty() {
                for r in &a.dead_lettered {
                    tracing::error!(key = %state.args.key, wamid = %r.message.wamid, attempts = r.attempts, "message failed every attempt; moved to dead-letter and the user was told");
                }
                Metrics::add(&deps.metrics.poison_messages, a.dead_lettered.len() as u64);
                kick_sender(deps);
            }
            if a.records.is_empty() {
                // Everything taken was dead-lettered; what waits behind the batch cap goes next.
                if !state.pending.is_empty() {
                    let _ = myself.cast(ConversationMsg::RetryCommit);
                }
                return None;
            }
            Some(a.records)
        }
        Err(e) => {
            tracing::error!(key = %state.args.key, error = %e, "recording a turn attempt failed; retrying in 1 s");
            for rec in taken {
                state.pending.insert((rec.message.timestamp, rec.seq), rec);
            }
            myself.send_after(Duration::from_secs(1), || ConversationMsg::RetryCommit);
            None
        }
    }
}

/// The identity of a 1:1 chat: its phone number (or user id when Meta gives no number).
fn identity_of(session: &SessionState, records: &[InboxRecord]) -> Option<String> {
    if session.is_group {
        return None;
    }
    let m = &records.last()?.message;
    let id = m.from.as_deref().or(m.from_user_id.as_deref())?;
    Some(crate::accounts::link_key(id))
}

/// The text of Sandra's own messages that this turn's messages reply to: what tapped buttons
/// and list rows answer, and (in groups) whether a reply was a reply to Sandra.
fn answered_messages(store: &Store, records: &[InboxRecord]) -> HashMap<String, String> {
    records
        .iter()
        .filter(|r| {
            matches!(r.message.content, Content::ChoiceReply { .. }) || r.message.group_id.is_some()
        })
        .filter_map(|r| r.message.context.as_ref()?.id.clone())
        .filter_map(|id| match store.sent_text(&id) {
            Ok(Some(text)) => Some((id, text)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "looking up the message a reply answers failed");
                None
            }
        })
        .collect()
}

fn record_events(state: &ConversationState, events: &[PlanEvent]) {
    let (key, m) = (&state.args.key, &state.deps().metrics);
    for e in events {
        match e {
            PlanEvent::Blocked { wamid } => {
                tracing::info!(%key, %wamid, "message from a blocked or not allowed sender dropped");
                Metrics::inc(&m.messages_blocked);
            }
            PlanEvent::RateLimited { wamid, notify } => {
                tracing::info!(%key, %wamid, notify, "message over the sender's rate limit dropped");
                Metrics::inc(&m.messages_rate_limited);
            }
            PlanEvent::Unsupported {
                wamid,
                kind,
                detail,
            } => {
                tracing::info!(%key, %wamid, %kind, ?detail, "message type Sandra cannot read");
                Metrics::inc(&m.messages_unsupported);
            }
        }
    }
}

fn kick_sender(deps: &ConversationDeps) {
    if let Some(s) = deps.run.sender.try_get() {
        let _ = s.cast(SenderMsg::Kick);
    }
}

/// Commits a finished turn (session, replies, inbox removal) in one transaction, then starts the
/// next one. A storage error keeps the turn for `RetryCommit`.
async fn finish_turn(
    myself: &ActorRef<ConversationMsg>,
    state: &mut ConversationState,
    flight: InFlight,
    reply: Option<BrainReply>,
) {
    let deps = state.args.deps.clone();
    let now = now_ms();
    let mut c = commit::commit(
        &flight.base,
        &flight.plan,
        reply.as_ref(),
        now / 1000,
        deps.policy.max_history_turns,
    );
    // Queued after the text, in the same transaction: the text goes first and on its own, so a
    // voice note that cannot be made or uploaded never costs the user the answer.
    let spoken = commit::voice_replies(
        &c,
        &flight.plan,
        reply.as_ref(),
        flight.heard_language.as_deref(),
        &deps.voice,
    );
    c.replies.extend(spoken);
    let committed = match deps.store.commit_turn_with(
        &c.session,
        &c.seqs,
        &c.replies,
        flight.plan.identity.as_ref(),
    ) {
        Ok(_) => deps.store.sync().await,
        Err(e) => Err(e),
    };
    tracing::debug!(key = %state.args.key, answered = c.seqs.len(), replies = c.replies.len(), ok = committed.is_ok(), "turn finished");
    match committed {
        Ok(()) => {
            state.session = Some(c.session);
            Metrics::inc(&deps.metrics.turns_completed);
            if !c.replies.is_empty() {
                // From the oldest message's arrival to its answer being durable and on its way.
                if let Some(first) = flight.plan.records.iter().map(|r| r.received_at_ms).min() {
                    let secs = (now - first).max(0) as f64 / 1000.0;
                    deps.metrics.time_to_reply_seconds.record(secs);
                }
                kick_sender(&deps);
            }
            start_turn(myself, state).await;
        }
        Err(e) => {
            tracing::error!(key = %state.args.key, error = %e, "committing a turn failed; retrying in 1 s");
            state.uncommitted = Some((flight, reply));
            myself.send_after(Duration::from_secs(1), || ConversationMsg::RetryCommit);
        }
    }
}

/// A media message's reference as the planner and the run task see it, for their tests.
#[cfg(test)]
pub(crate) fn test_media(
    kind: crate::whatsapp::MediaKind,
    caption: Option<&str>,
) -> crate::whatsapp::MediaRef {
    crate::whatsapp::MediaRef {
        kind,
        id: "m1".into(),
        mime_type: None,
        sha256: None,
        caption: caption.map(String::from),
        filename: None,
        voice: false,
        animated: false,
        url: None,
    }
}
