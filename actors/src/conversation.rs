//! The conversation actor: one per chat ([`ConversationKey`]), holding that chat's session.
//!
//! - Owns: the [`SessionState`] (loaded from the store in `pre_start`, persisted after every
//!   turn) and the chat's unanswered messages (`pending`), which mirror the inbox in the store.
//! - Takes: [`ConversationMsg::Inbound`] from the router, [`ConversationMsg::TurnDone`] from its
//!   own brain task, [`ConversationMsg::Passivate`] from the router's idle sweep.
//! - Supervised by: the router, which spawns it (unnamed), restarts it from the store when it
//!   fails, and passivates it when idle.
//! - Never: blocks (the brain runs in a spawned task and reports back as a message), talks to the
//!   Graph API itself (replies go through the outbox and the sender), or returns `Err` for a
//!   domain failure (a brain error becomes an apology to the user). It returns `Err` only when its
//!   brain task *panicked*, so the router restarts it from its stored state.
//!
//! Exactly-once: a message stays in the store's inbox until the transaction that stores the
//! reply in the outbox and the new session state also removes it. A crash before that replays
//! it (the next incarnation reloads the inbox in `pre_start`); a crash after never does. Each
//! turn first counts an attempt on its records durably; a record that already had
//! `max_attempts` (a poison message, even one that kills the process) is dead-lettered with one
//! apology instead (see `Store::begin_attempt`).
//! Messages are answered in timestamp order; messages that arrive while a turn is in progress are
//! answered together in the next turn.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::brain::{Brain, BrainError, BrainReply, TurnInput, UserInput};
use crate::limits::{Limits, RATE_NOTICE, Verdict};
use crate::llm_brain::author_line;
use crate::metrics::Metrics;
use crate::router::RouterMsg;
use crate::sender::SenderMsg;
use crate::session::{SessionState, Speaker, Turn};
use crate::slot::ActorSlot;
use crate::store::{InboxRecord, NewOutbound, OutboundBody, Store, now_ms, refresh_target};
use crate::whatsapp::{Content, ConversationKey, InboundMessage, MediaKind};

pub type ConversationRef = ActorRef<ConversationMsg>;

/// How conversations behave (from `[conversation]` in config.toml).
#[derive(Debug, Clone)]
pub struct ConversationPolicy {
    /// The name users address Sandra by in groups ("@Sandra", "Sandra, ...").
    pub bot_name: String,
    /// Turns kept verbatim in the session (older ones are dropped; the LLM brain summarises).
    pub max_history_turns: usize,
    /// Show the typing indicator while the brain works (1:1 chats only; groups cannot).
    pub typing_indicator: bool,
    /// Give up on a brain that takes longer than this.
    pub brain_timeout: Duration,
}

impl Default for ConversationPolicy {
    fn default() -> Self {
        Self {
            bot_name: "Sandra".into(),
            max_history_turns: 40,
            typing_indicator: true,
            brain_timeout: Duration::from_secs(300),
        }
    }
}

/// Everything a conversation needs; cloned by the router for each spawn.
#[derive(Clone)]
pub struct ConversationArgs {
    pub key: ConversationKey,
    pub store: Arc<Store>,
    pub brain: Arc<dyn Brain>,
    pub sender: ActorSlot<SenderMsg>,
    pub router: ActorRef<RouterMsg>,
    pub metrics: Arc<Metrics>,
    pub policy: ConversationPolicy,
    /// Voice-note transcription, when a Whisper model is installed.
    pub voice: Option<VoiceSupport>,
    /// Allow/block lists, per-sender rates and per-turn caps, shared by every conversation.
    pub limits: Arc<Limits>,
    /// Turns a message may start (crashes included) before it is dead-lettered with an apology.
    pub max_attempts: u32,
}

/// What a conversation needs to answer voice notes: the media client and the transcriber.
#[derive(Clone)]
pub struct VoiceSupport {
    pub media: crate::media::MediaClient,
    pub transcriber: sandra_models::whisper::Transcriber,
    /// Start the reply with what Sandra heard, so the user can tell a mishearing.
    pub echo_transcript: bool,
    /// Longest stretch of a voice note decoded and transcribed; the rest is ignored and the
    /// user told so (`transcription.max_audio_seconds`).
    pub max_audio_seconds: f32,
    /// Decodes running at once: one per core, so a burst of voice notes cannot take every
    /// blocking thread or multiply the decode buffers by the burst's size.
    pub decode_slots: Arc<tokio::sync::Semaphore>,
}

impl VoiceSupport {
    /// One decode slot per core.
    pub fn decode_slots() -> Arc<tokio::sync::Semaphore> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(tokio::sync::Semaphore::new(cores))
    }
}

/// What the turn task hands back: the brain's reply, the inputs as resolved (voice notes
/// replaced by their transcripts), and messages for inputs that could not be used.
pub struct TurnOutcome {
    pub reply: Result<BrainReply, BrainError>,
    /// `None` keeps the inputs as they were (the task timed out before resolving them).
    pub inputs: Option<Vec<UserInput>>,
    pub notes: Vec<String>,
}

pub enum ConversationMsg {
    /// A newly accepted (or replayed) message for this chat.
    Inbound(Box<InboxRecord>),
    /// The turn task finished (or panicked: `None`).
    TurnDone(Option<TurnOutcome>),
    /// Retry committing after a storage error, or start the next turn (what waited behind the
    /// batch cap, or an attempt that could not be recorded).
    RetryCommit,
    /// The router's idle sweep: stop if nothing is pending, else decline.
    Passivate,
}

pub struct Conversation;

/// A turn being answered by the brain.
struct InFlight {
    records: Vec<InboxRecord>,
    inputs: Vec<UserInput>,
    /// Replies already decided without the brain (commands, canned answers).
    direct: Vec<String>,
    /// Messages that only become history (reactions, group chatter not addressed to Sandra).
    quiet: Vec<Turn>,
    /// Voice notes to transcribe first: (index into `inputs`, media).
    voice: Vec<(usize, crate::whatsapp::MediaRef)>,
}

pub struct ConversationState {
    args: ConversationArgs,
    session: Option<SessionState>,
    /// Unanswered messages by (timestamp, seq): timestamp order, then arrival order.
    pending: BTreeMap<(i64, u64), InboxRecord>,
    in_flight: Option<InFlight>,
    /// A finished turn whose commit failed, waiting for `RetryCommit`.
    uncommitted: Option<(InFlight, Option<BrainReply>)>,
}

impl Actor for Conversation {
    type Msg = ConversationMsg;
    type State = ConversationState;
    type Arguments = ConversationArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConversationArgs,
    ) -> Result<ConversationState, ActorProcessingErr> {
        let session = args.store.load_session(&args.key)?;
        let mut pending = BTreeMap::new();
        for rec in args.store.unfinished_for(&args.key)? {
            pending.insert((rec.message.timestamp, rec.seq), rec);
        }
        Metrics::inc(&args.metrics.conversations_spawned);
        tracing::debug!(key = %args.key, restored = session.is_some(), pending = pending.len(), "conversation started");
        Ok(ConversationState {
            args,
            session,
            pending,
            in_flight: None,
            uncommitted: None,
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
                        .is_some_and(|f| f.records.iter().any(|r| r.seq == seq));
                // The inbox is the truth: a record no longer there was already answered.
                let unfinished = match state.args.store.is_unfinished(seq) {
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
            ConversationMsg::TurnDone(Some(outcome)) => {
                let Some(mut flight) = state.in_flight.take() else {
                    return Ok(());
                };
                if let Some(inputs) = outcome.inputs {
                    flight.inputs = inputs;
                }
                flight.direct.extend(outcome.notes);
                let reply = match outcome.reply {
                    Ok(reply) => Some(reply),
                    Err(e) => {
                        tracing::warn!(key = %state.args.key, error = %e, "brain failed; apologising");
                        Metrics::inc(&state.args.metrics.turns_brain_errors);
                        Some(BrainReply::from(match e {
                            BrainError::Busy => "I'm a bit overloaded right now. Please send that again in a minute.".to_string(),
                            BrainError::Failed(_) => "Sorry, something went wrong while I was thinking about that. Please try again.".to_string(),
                        }))
                    }
                };
                finish_turn(&myself, state, flight, reply).await;
            }
            ConversationMsg::TurnDone(None) => {
                // The brain task panicked: that is a bug, not a domain error. Fail, so the router
                // restarts this conversation from its stored state (the messages are still in the
                // inbox and will be answered by the next incarnation).
                return Err(
                    format!("brain task panicked in conversation {}", state.args.key).into(),
                );
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
                        .router
                        .cast(RouterMsg::PassivateDeclined(state.args.key.clone()));
                }
            }
        }
        Ok(())
    }
}

/// What a user message becomes for the brain, or a direct answer when the brain cannot use it.
enum Rendered {
    /// Goes to the brain.
    Input(String),
    /// Answered without the brain (commands, things Sandra cannot read yet).
    Direct(String),
    /// Recorded in history, not answered (reactions).
    Quiet(String),
    /// `/reset`.
    Reset,
    /// A voice note or audio file, transcribed in the turn task.
    Voice(crate::whatsapp::MediaRef),
}

/// A voice note's place in history when it was never heard (download, decoding or
/// transcription failed, or the turn timed out first).
pub const UNHEARD_VOICE_NOTE: &str = "[voice note that could not be transcribed]";

const HELP: &str = "I'm Sandra, an AI assistant. Just write to me and I'll answer. \
Commands: /reset forgets our conversation, /help shows this message.";

fn render(m: &InboundMessage, can_hear: bool) -> Rendered {
    match &m.content {
        Content::Text { body } => {
            let t = body.trim();
            if let Some(cmd) = t.strip_prefix('/') {
                let cmd = cmd.split_whitespace().next().unwrap_or("").to_lowercase();
                return match cmd.as_str() {
                    "reset" => Rendered::Reset,
                    "help" | "start" => Rendered::Direct(HELP.into()),
                    _ => Rendered::Direct(format!("I don't know the command /{cmd}. {HELP}")),
                };
            }
            Rendered::Input(body.clone())
        }
        Content::ChoiceReply { title, .. } => Rendered::Input(title.clone()),
        Content::Location {
            latitude,
            longitude,
            name,
            address,
        } => {
            let place = [name.as_deref(), address.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
            Rendered::Input(format!(
                "[I shared a location: {}({latitude:.5}, {longitude:.5})]",
                if place.is_empty() {
                    String::new()
                } else {
                    format!("{place} ")
                }
            ))
        }
        Content::Contacts { cards } => {
            Rendered::Input(format!("[I shared contact cards: {}]", cards.join("; ")))
        }
        Content::Reaction { message_id, emoji } => Rendered::Quiet(if emoji.is_empty() {
            format!("[removed a reaction from message {message_id}]")
        } else {
            format!("[reacted {emoji} to message {message_id}]")
        }),
        Content::Media(media) if media.kind == MediaKind::Audio && can_hear => {
            Rendered::Voice(media.clone())
        }
        Content::Media(media) => {
            let what = match media.kind {
                MediaKind::Image => "photo",
                MediaKind::Audio if media.voice => "voice note",
                MediaKind::Audio => "audio file",
                MediaKind::Video => "video",
                MediaKind::Document => "document",
                MediaKind::Sticker => "sticker",
            };
            match &media.caption {
                Some(c) if !c.trim().is_empty() => Rendered::Input(format!(
                    "[I sent a {what} you cannot see yet, with the caption:] {c}"
                )),
                _ if media.kind == MediaKind::Sticker => {
                    Rendered::Quiet(format!("[sent a {what}]"))
                }
                _ => Rendered::Direct(format!(
                    "I got your {what}, but I can't open {what}s yet. Could you tell me in a text \
                     message what you'd like me to know about it?"
                )),
            }
        }
        Content::Unsupported { kind, .. } => Rendered::Direct(format!(
            "I can't read this kind of message ({kind}) yet. Could you send it as text?"
        )),
    }
}

/// In a group, Sandra answers only when mentioned by name or number, or replied to.
fn addressed_in_group(m: &InboundMessage, policy: &ConversationPolicy) -> bool {
    if m.context
        .as_ref()
        .and_then(|c| c.from.as_deref())
        .is_some_and(|f| !m.display_phone_number.is_empty() && f == m.display_phone_number)
    {
        return true;
    }
    let text = match &m.content {
        Content::Text { body } => body.to_lowercase(),
        Content::Media(media) => media.caption.clone().unwrap_or_default().to_lowercase(),
        _ => return false,
    };
    let name = policy.bot_name.to_lowercase();
    (!name.is_empty() && text.contains(&name))
        || (!m.display_phone_number.is_empty()
            && text.contains(&format!("@{}", m.display_phone_number)))
}

const POISON_APOLOGY: &str =
    "Sorry, I couldn't process one of your messages. Please try sending it differently.";

/// Starts answering everything pending, if no turn is in progress.
async fn start_turn(myself: &ActorRef<ConversationMsg>, state: &mut ConversationState) {
    if state.in_flight.is_some() || state.uncommitted.is_some() || state.pending.is_empty() {
        return;
    }
    // At most `max_batch_inputs` messages a turn; the rest wait in `pending` (and the inbox).
    // The cut comes before the attempt is counted, so a message that waits is not charged an
    // attempt it never had.
    let max_batch = state.args.limits.policy().max_batch_inputs.max(1);
    let mut taken = BTreeMap::new();
    while taken.len() < max_batch {
        let Some((k, rec)) = state.pending.pop_first() else {
            break;
        };
        taken.insert(k, rec);
    }
    // Count this attempt durably before any work, so a message that kills the whole process
    // is given up after `max_attempts` instead of replayed forever.
    let seqs: Vec<u64> = taken.values().map(|r| r.seq).collect();
    let store = state.args.store.clone();
    let session = state.session.as_ref();
    let apology = |rec: &InboxRecord| {
        let mut target = session.map_or_else(|| rec.message.reply_target(), |s| s.target.clone());
        refresh_target(&mut target, &rec.message);
        let last = session.and_then(|s| s.last_inbound_at);
        NewOutbound {
            target,
            body: OutboundBody::Text {
                body: POISON_APOLOGY.into(),
            },
            context_message_id: Some(rec.message.wamid.clone()),
            window_expires_at: Some(
                last.map_or(rec.message.timestamp, |t| t.max(rec.message.timestamp)) + 24 * 3600,
            ),
        }
    };
    let begun = store.begin_attempt(&state.args.key, &seqs, state.args.max_attempts, apology);
    let attempt = match begun {
        Ok(a) => store.sync().await.map(|()| a),
        Err(e) => Err(e),
    };
    let records: Vec<InboxRecord> = match attempt {
        Ok(a) => {
            if !a.dead_lettered.is_empty() {
                for r in &a.dead_lettered {
                    tracing::error!(key = %state.args.key, wamid = %r.message.wamid, attempts = r.attempts, "message failed every attempt; moved to dead-letter and the user was told");
                }
                Metrics::add(
                    &state.args.metrics.poison_messages,
                    a.dead_lettered.len() as u64,
                );
                let _ = state.args.sender.get().cast(SenderMsg::Kick);
            }
            a.records
        }
        Err(e) => {
            tracing::error!(key = %state.args.key, error = %e, "recording a turn attempt failed; retrying in 1 s");
            state.pending.extend(taken);
            myself.send_after(Duration::from_secs(1), || ConversationMsg::RetryCommit);
            return;
        }
    };
    if records.is_empty() {
        // Everything taken was dead-lettered; what waits behind the batch cap goes next.
        if !state.pending.is_empty() {
            let _ = myself.cast(ConversationMsg::RetryCommit);
        }
        return;
    }
    let policy = state.args.policy.clone();
    let session = state.session.get_or_insert_with(|| {
        SessionState::new(state.args.key.clone(), records[0].message.reply_target())
    });
    let mut flight = InFlight {
        records: Vec::new(),
        inputs: Vec::new(),
        direct: Vec::new(),
        quiet: Vec::new(),
        voice: Vec::new(),
    };
    let limits = state.args.limits.clone();
    for rec in records {
        let m = &rec.message;
        let sender_id = m
            .from
            .as_deref()
            .or(m.from_user_id.as_deref())
            .unwrap_or("");
        match limits.check(sender_id, m.from.as_deref()) {
            Verdict::Answer => {}
            Verdict::Blocked => {
                // Answered by silence: leaves the inbox with this turn, enters no history.
                tracing::info!(key = %state.args.key, wamid = %m.wamid, "message from a blocked or not allowed sender dropped");
                Metrics::inc(&state.args.metrics.messages_blocked);
                flight.records.push(rec);
                continue;
            }
            Verdict::RateLimited { notify } => {
                tracing::info!(key = %state.args.key, wamid = %m.wamid, notify, "message over the sender's rate limit dropped");
                Metrics::inc(&state.args.metrics.messages_rate_limited);
                // No notice for group chatter not meant for Sandra: the group did not ask.
                if notify && (!session.is_group || addressed_in_group(m, &policy)) {
                    flight.direct.push(RATE_NOTICE.into());
                }
                flight.records.push(rec);
                continue;
            }
        }
        refresh_target(&mut session.target, m);
        if m.contact_name.is_some() && !session.is_group {
            session.contact_name = m.contact_name.clone();
        }
        if let Content::Unsupported { kind, detail } = &m.content {
            tracing::info!(key = %state.args.key, wamid = %m.wamid, %kind, ?detail, "message type Sandra cannot read");
            Metrics::inc(&state.args.metrics.messages_unsupported);
        }
        let rendered = match render(m, state.args.voice.is_some()) {
            Rendered::Input(t) => Rendered::Input(limits.cap_text(t)),
            Rendered::Quiet(t) => Rendered::Quiet(limits.cap_text(t)),
            other => other,
        };
        if session.is_group && !addressed_in_group(m, &policy) {
            // Group chatter: remember it as context, answer nothing.
            let text = match rendered {
                Rendered::Input(t) | Rendered::Quiet(t) => t,
                Rendered::Direct(_) | Rendered::Reset | Rendered::Voice(_) => String::new(),
            };
            if !text.is_empty() {
                flight.quiet.push(user_turn(m, text));
            }
            flight.records.push(rec);
            continue;
        }
        match rendered {
            Rendered::Input(text) => flight.inputs.push(UserInput {
                wamid: m.wamid.clone(),
                author: m.contact_name.clone(),
                text,
            }),
            Rendered::Direct(text) => flight.direct.push(text),
            Rendered::Quiet(text) => flight.quiet.push(user_turn(m, text)),
            Rendered::Voice(media) => {
                flight.voice.push((flight.inputs.len(), media));
                // Replaced by the transcript once heard; kept as is if it never is, so history
                // never holds an empty user turn.
                flight.inputs.push(UserInput {
                    wamid: m.wamid.clone(),
                    author: m.contact_name.clone(),
                    text: UNHEARD_VOICE_NOTE.into(),
                });
            }
            Rendered::Reset => {
                session.history.clear();
                session.summary = None;
                flight
                    .direct
                    .push("Done: I've forgotten our conversation. Let's start fresh.".into());
            }
        }
        flight.records.push(rec);
    }

    if flight.inputs.is_empty() {
        state.in_flight = Some(flight);
        let _ = myself.cast(ConversationMsg::TurnDone(Some(TurnOutcome {
            reply: Ok(BrainReply::default()),
            inputs: None,
            notes: Vec::new(),
        })));
        return;
    }

    let mut input = TurnInput {
        history: session.history.clone(),
        summary: session.summary.clone(),
        inputs: flight.inputs.clone(),
        contact_name: session.contact_name.clone(),
        is_group: session.is_group,
    };
    let typing_for = (!session.is_group && policy.typing_indicator)
        .then(|| flight.inputs.last().map(|i| i.wamid.clone()))
        .flatten();
    let voice_jobs = flight.voice.clone();
    state.in_flight = Some(flight);

    let brain = state.args.brain.clone();
    let voice = state.args.voice.clone();
    let sender = state.args.sender.clone();
    let me = myself.clone();
    tokio::spawn(async move {
        // What the voice notes turned out to say, kept outside the task so that a turn that
        // times out after transcribing still records the transcripts in history.
        let resolved: Arc<std::sync::Mutex<Option<Vec<UserInput>>>> = Arc::default();
        let resolved_in_task = resolved.clone();
        let work = tokio::spawn(async move {
            let mut notes = Vec::new();
            let mut heard = Vec::new();
            let mut failed = Vec::new();
            if let Some(v) = &voice {
                for (idx, media) in &voice_jobs {
                    match transcribe(v, media).await {
                        Ok((text, note)) => {
                            heard.push(text.clone());
                            input.inputs[*idx].text = text;
                            notes.extend(note);
                        }
                        Err(note) => {
                            notes.push(note);
                            failed.push(*idx);
                        }
                    }
                }
                *resolved_in_task
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(input.inputs.clone());
            }
            // History keeps every input (an unheard voice note as its marker); the brain gets
            // only what it can answer: the user already got a note about the rest.
            let all = input.inputs.clone();
            let mut i = 0;
            input.inputs.retain(|_| {
                i += 1;
                !failed.contains(&(i - 1))
            });
            let reply = if input.inputs.is_empty() {
                Ok(BrainReply::default())
            } else {
                brain.reply(input.clone()).await.map(|mut r| {
                    if voice.as_ref().is_some_and(|v| v.echo_transcript) && !heard.is_empty() {
                        let quoted: Vec<String> =
                            heard.iter().map(|h| format!("🎙️ _\"{h}\"_")).collect();
                        r.text = format!("{}\n\n{}", quoted.join("\n"), r.text);
                    }
                    r
                })
            };
            TurnOutcome {
                reply,
                inputs: Some(all),
                notes,
            }
        });
        // Dropping a JoinHandle does not stop its task: on timeout the task is aborted, which
        // drops the brain's future, and with it the model job's caller (see `ModelWorker`).
        let abort = work.abort_handle();
        let mut work = std::pin::pin!(tokio::time::timeout(policy.brain_timeout, work));
        // The typing indicator lasts ~25 s: refresh it every 20 s while the brain works.
        let mut refresh = tokio::time::interval(Duration::from_secs(20));
        let outcome = loop {
            tokio::select! {
                res = &mut work => break res,
                _ = refresh.tick() => {
                    if let Some(w) = &typing_for {
                        let _ = sender.get().cast(SenderMsg::Typing { wamid: w.clone() });
                    }
                }
            }
        };
        let done = match outcome {
            Ok(Ok(outcome)) => Some(outcome),
            Ok(Err(join)) => {
                tracing::error!(error = %join, "turn task panicked");
                None
            }
            Err(_) => {
                abort.abort();
                Some(TurnOutcome {
                    reply: Err(BrainError::Failed("timed out".into())),
                    inputs: resolved
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take(),
                    notes: Vec::new(),
                })
            }
        };
        let _ = me.cast(ConversationMsg::TurnDone(done));
    });
}

/// Downloads, decodes (off the runtime) and transcribes one voice note, in memory only: the
/// transcript, and a note for the user when only the first `max_audio_seconds` were heard.
/// The error is the friendly message the user gets.
async fn transcribe(
    v: &VoiceSupport,
    media: &crate::whatsapp::MediaRef,
) -> Result<(String, Option<String>), String> {
    let fetched = v.media.fetch(media).await.map_err(|e| {
        tracing::warn!(media = %media.id, error = %e, "voice note download failed");
        match e {
            crate::media::MediaError::Gone => {
                "I couldn't download your voice note anymore. Could you send it again?".to_string()
            }
            crate::media::MediaError::TooLarge { .. } => {
                "Your voice note is too long for me. Could you send a shorter one?".to_string()
            }
            _ => "I couldn't download your voice note. Could you send it again?".to_string(),
        }
    })?;
    let mime = fetched.mime.clone();
    let max_seconds = v.max_audio_seconds;
    // Held until the decode ends; the semaphore is never closed, so this cannot fail.
    let slot = v.decode_slots.clone().acquire_owned().await.ok();
    let pcm = tokio::task::spawn_blocking(move || {
        let pcm = sandra_models::audio::decode_to_pcm16k(&fetched.bytes, &mime, max_seconds);
        drop(slot);
        pcm
    })
    .await
    .map_err(|_| "I couldn't play your voice note. Could you send it again?".to_string())?
    .map_err(|e| {
        tracing::warn!(media = %media.id, error = %e, "voice note decoding failed");
        match e {
            sandra_models::audio::AudioError::Unsupported { .. } => {
                "I can't play this audio format yet. Could you record a voice note instead?"
                    .to_string()
            }
            _ => "I couldn't play your voice note. Could you send it again?".to_string(),
        }
    })?;
    let note = pcm.truncated.then(|| {
        tracing::info!(media = %media.id, max_seconds, "voice note longer than the cap, truncated");
        let limit = describe_duration(max_seconds);
        format!("Your voice note is longer than {limit}; I only listened to the first {limit}.")
    });
    let t = v.transcriber.transcribe(pcm.samples).await.map_err(|e| {
        tracing::warn!(media = %media.id, error = %e, "transcription failed");
        "Sorry, I couldn't transcribe your voice note. Could you try again, or type it?".to_string()
    })?;
    let text = t.text.trim().to_string();
    if text.is_empty() {
        return Err("I couldn't hear anything in your voice note. Could you try again?".into());
    }
    Ok((text, note))
}

/// "15 minutes", "1 minute", "90 seconds", "1 minute 30 seconds" (whole seconds).
fn describe_duration(seconds: f32) -> String {
    let total = seconds.round().max(1.0) as u64;
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match (total / 60, total % 60) {
        (0, s) => plural(s, "second"),
        (m, 0) => plural(m, "minute"),
        (m, s) => format!("{} {}", plural(m, "minute"), plural(s, "second")),
    }
}

fn user_turn(m: &InboundMessage, text: String) -> Turn {
    let text = author_line(m.contact_name.as_deref(), m.group_id.is_some(), &text);
    Turn {
        speaker: Speaker::User,
        text,
        at: m.timestamp,
        wamids: vec![m.wamid.clone()],
    }
}

/// Records the turn in the session and commits it with its replies in one transaction.
async fn finish_turn(
    myself: &ActorRef<ConversationMsg>,
    state: &mut ConversationState,
    flight: InFlight,
    reply: Option<BrainReply>,
) {
    let Some(base) = state.session.clone() else {
        return;
    };
    let mut session = base;
    let now = now_ms() / 1000;
    for rec in &flight.records {
        let ts = rec.message.timestamp;
        session.last_inbound_at = Some(session.last_inbound_at.map_or(ts, |t| t.max(ts)));
    }
    session.history.extend(flight.quiet.iter().cloned());
    for i in &flight.inputs {
        let text = author_line(i.author.as_deref(), session.is_group, &i.text);
        let at = flight
            .records
            .iter()
            .find(|r| r.message.wamid == i.wamid)
            .map_or(now, |r| r.message.timestamp);
        session.history.push(Turn {
            speaker: Speaker::User,
            text,
            at,
            wamids: vec![i.wamid.clone()],
        });
    }
    // A new running summary replaces the turns it folded in (counted from the oldest).
    if let Some(update) = reply.as_ref().and_then(|r| r.summary.as_ref()) {
        let n = update.folded_turns.min(session.history.len());
        session.history.drain(..n);
        session.summary = Some(update.summary.clone());
    }
    let mut texts: Vec<String> = flight.direct.clone();
    if let Some(r) = reply
        .as_ref()
        .map(|r| &r.text)
        .filter(|r| !r.trim().is_empty())
    {
        texts.push(r.clone());
        session.history.push(Turn {
            speaker: Speaker::Assistant,
            text: r.clone(),
            at: now,
            wamids: flight.inputs.iter().map(|i| i.wamid.clone()).collect(),
        });
    }
    let max = state.args.policy.max_history_turns;
    if session.history.len() > max {
        let drop = session.history.len() - max;
        session.history.drain(..drop);
    }
    session.turns += 1;

    // Quote the message answered when the reply covers several messages or a group message.
    let quote = if flight.inputs.len() > 1 || session.is_group {
        flight.inputs.last().map(|i| i.wamid.clone())
    } else {
        None
    };
    // WhatsApp takes at most 4096 characters a message: long replies go out in paced parts.
    let replies: Vec<NewOutbound> = texts
        .iter()
        .flat_map(|t| crate::sender::split_message(t, crate::sender::MAX_TEXT_CHARS))
        .map(|body| NewOutbound {
            target: session.target.clone(),
            body: OutboundBody::Text { body },
            context_message_id: quote.clone(),
            window_expires_at: session.window_expires_at(),
        })
        .collect();
    let seqs: Vec<u64> = flight.records.iter().map(|r| r.seq).collect();
    let store = state.args.store.clone();
    let committed = match store.commit_turn(&session, &seqs, &replies) {
        Ok(_) => store.sync().await,
        Err(e) => Err(e),
    };
    tracing::debug!(key = %state.args.key, answered = seqs.len(), replies = replies.len(), ok = committed.is_ok(), "turn finished");
    match committed {
        Ok(()) => {
            state.session = Some(session);
            Metrics::inc(&state.args.metrics.turns_completed);
            if !replies.is_empty() {
                let _ = state.args.sender.get().cast(SenderMsg::Kick);
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

#[cfg(test)]
mod duration_tests {
    #[test]
    fn truncation_note_names_the_cap_in_words() {
        assert_eq!(super::describe_duration(900.0), "15 minutes");
        assert_eq!(super::describe_duration(60.0), "1 minute");
        assert_eq!(super::describe_duration(90.0), "1 minute 30 seconds");
        assert_eq!(super::describe_duration(1.0), "1 second");
        assert_eq!(super::describe_duration(0.4), "1 second");
    }
}
