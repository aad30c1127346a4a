//! The router: owns the lifecycle of conversation actors.
//!
//! - Owns: `live` (key → conversation actor), `by_id` (actor id → key, to map supervision events
//!   back) and `passivating` (keys being stopped, with messages buffered for their next
//!   incarnation).
//! - Takes: [`RouterMsg::Route`] from ingestion, [`RouterMsg::Sweep`] from its own interval,
//!   [`RouterMsg::Report`] from conversations (through a derived ref: conversations do not know
//!   the router).
//! - Supervises: every conversation (spawned linked and unnamed; only the router decides spawns,
//!   so there is no check-then-spawn race). Supervised by the root supervisor.
//! - Never: awaits a model or the network, or lets a conversation's exit stop it (it overrides
//!   `handle_supervisor_evt`; ractor's default would stop the router on the first idle child).
//!
//! Passivation: an idle conversation is asked to stop; messages for it that arrive meanwhile are
//! buffered here and replayed into a fresh incarnation once it has stopped (which reloads its
//! session from the store), so none is lost to the stop. A conversation that fails is
//! re-created from its stored state at once if it has unanswered messages. Crash loops end in
//! the conversation, not here: every turn counts an attempt on its messages durably, and a
//! message that used up `max_attempts` attempts is dead-lettered with an apology. Counting in
//! the store, not in this actor's memory, also ends loops that kill the whole process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::conversation::{
    Conversation, ConversationArgs, ConversationDeps, ConversationMsg, ConversationRef,
    ConversationReport,
};
use crate::metrics::Metrics;
use crate::store::InboxRecord;
use crate::whatsapp::ConversationKey;

pub type RouterRef = ActorRef<RouterMsg>;

pub enum RouterMsg {
    /// Deliver an accepted message to its conversation.
    Route(Box<InboxRecord>),
    /// Passivate conversations idle for longer than `idle_timeout`.
    Sweep,
    /// What a conversation reports (e.g. it was asked to passivate but is busy).
    Report(ConversationReport),
    /// Passivate one conversation now (operators and tests).
    PassivateNow(ConversationKey),
    /// The conversation ended for good (its group was deleted, or Sandra removed from it; the
    /// store already closed it): stop its actor now, dropping what was buffered for it.
    Close(ConversationKey),
    /// Number of live conversation actors.
    LiveCount(RpcReplyPort<usize>),
    /// The actor currently serving a key, if any (tests).
    Lookup(ConversationKey, RpcReplyPort<Option<ConversationRef>>),
}

impl From<ConversationReport> for RouterMsg {
    fn from(r: ConversationReport) -> Self {
        RouterMsg::Report(r)
    }
}

/// Needed by ractor's derived refs, to hand back a report that could not be delivered.
impl TryFrom<RouterMsg> for ConversationReport {
    type Error = ();
    fn try_from(m: RouterMsg) -> Result<Self, ()> {
        match m {
            RouterMsg::Report(r) => Ok(r),
            _ => Err(()),
        }
    }
}

#[derive(Clone)]
pub struct RouterArgs {
    /// What every conversation shares (store, brain, sender, limits, policy): one value.
    pub deps: Arc<ConversationDeps>,
    pub idle_timeout: Duration,
    pub sweep_every: Duration,
}

#[derive(Clone, Copy)]
pub struct Router;

struct Entry {
    actor: ConversationRef,
    last_routed: Instant,
}

pub struct RouterState {
    args: RouterArgs,
    live: HashMap<ConversationKey, Entry>,
    by_id: HashMap<ActorId, ConversationKey>,
    passivating: HashMap<ConversationKey, (ConversationRef, Vec<InboxRecord>)>,
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RouterMsg>,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        myself.send_interval(args.sweep_every, || RouterMsg::Sweep);
        Ok(RouterState {
            args,
            live: HashMap::new(),
            by_id: HashMap::new(),
            passivating: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<RouterMsg>,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        // Replay: every conversation with unanswered messages (after a crash or restart) is
        // started now; it reloads those messages from the inbox itself. Corrupt records are
        // dead-lettered by the store; a storage error is logged, not fatal: the messages stay in
        // the inbox and a new webhook for the chat, or the next restart, picks them up.
        let unfinished = state.args.deps.store.unfinished().unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the inbox for replay failed");
            Vec::new()
        });
        let mut keys: Vec<ConversationKey> = unfinished.into_iter().map(|r| r.key).collect();
        keys.sort();
        keys.dedup();
        if !keys.is_empty() {
            tracing::info!(conversations = keys.len(), "replaying unanswered messages");
        }
        for key in keys {
            if let Err(e) = spawn_conversation(&myself, state, key.clone()).await {
                tracing::error!(%key, error = %e, "could not restore conversation");
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Route(rec) => route(&myself, state, *rec).await,
            RouterMsg::Sweep => {
                let idle = state.args.idle_timeout;
                let stale: Vec<ConversationKey> = state
                    .live
                    .iter()
                    .filter(|(_, e)| e.last_routed.elapsed() >= idle)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in stale {
                    passivate(state, key);
                }
            }
            RouterMsg::PassivateNow(key) => passivate(state, key),
            RouterMsg::Close(key) => {
                // No turn of it can store or send anything any more (the store refuses), so
                // stopping mid-turn loses nothing; its exit is then an ordinary termination.
                if let Some(entry) = state.live.remove(&key) {
                    entry.actor.stop(Some("conversation closed".into()));
                }
                if let Some((actor, _buffer)) = state.passivating.remove(&key) {
                    actor.stop(Some("conversation closed".into()));
                }
                tracing::info!(%key, "conversation closed");
            }
            RouterMsg::Report(ConversationReport::PassivateDeclined(key)) => {
                if let Some((actor, buffer)) = state.passivating.remove(&key) {
                    // Still alive and busy: take it back, with what arrived meanwhile.
                    for rec in buffer {
                        let _ = actor.cast(ConversationMsg::Inbound(Box::new(rec)));
                    }
                    state.live.insert(
                        key,
                        Entry {
                            actor,
                            last_routed: Instant::now(),
                        },
                    );
                }
            }
            RouterMsg::LiveCount(reply) => {
                let _ = reply.send(state.live.len());
            }
            RouterMsg::Lookup(key, reply) => {
                let _ = reply.send(state.live.get(&key).map(|e| e.actor.clone()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RouterMsg>,
        evt: SupervisionEvent,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let Some(key) = state.by_id.remove(&cell.get_id()) else {
                    return Ok(());
                };
                tracing::debug!(%key, ?reason, "conversation stopped");
                if state
                    .live
                    .get(&key)
                    .is_some_and(|e| e.actor.get_id() == cell.get_id())
                {
                    state.live.remove(&key);
                }
                if let Some((_, buffer)) = state.passivating.remove(&key) {
                    Metrics::inc(&state.args.deps.metrics.conversations_passivated);
                    if !buffer.is_empty() {
                        respawn_with(&myself, state, key, buffer).await;
                    }
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(key) = state.by_id.remove(&cell.get_id()) else {
                    return Ok(());
                };
                Metrics::inc(&state.args.deps.metrics.conversations_failed);
                tracing::error!(%key, error = %err, "conversation failed; restarting from stored state");
                if state
                    .live
                    .get(&key)
                    .is_some_and(|e| e.actor.get_id() == cell.get_id())
                {
                    state.live.remove(&key);
                }
                let buffer = state
                    .passivating
                    .remove(&key)
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                // No crash-loop bookkeeping here: the failed turn already counted an attempt on
                // its messages in the store, and the new incarnation dead-letters any message
                // that used up its attempts.
                let has_work = !buffer.is_empty()
                    || state
                        .args
                        .deps
                        .store
                        .unfinished_for(&key)
                        .map(|u| !u.is_empty())
                        .unwrap_or(false);
                if has_work {
                    respawn_with(&myself, state, key, buffer).await;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn passivate(state: &mut RouterState, key: ConversationKey) {
    if let Some(entry) = state.live.remove(&key) {
        let _ = entry.actor.cast(ConversationMsg::Passivate);
        state.passivating.insert(key, (entry.actor, Vec::new()));
    }
}

async fn respawn_with(
    myself: &ActorRef<RouterMsg>,
    state: &mut RouterState,
    key: ConversationKey,
    buffer: Vec<InboxRecord>,
) {
    match spawn_conversation(myself, state, key.clone()).await {
        Ok(actor) => {
            for rec in buffer {
                let _ = actor.cast(ConversationMsg::Inbound(Box::new(rec)));
            }
        }
        Err(e) => tracing::error!(%key, error = %e, "could not restart conversation"),
    }
}

async fn spawn_conversation(
    myself: &ActorRef<RouterMsg>,
    state: &mut RouterState,
    key: ConversationKey,
) -> Result<ConversationRef, ActorProcessingErr> {
    let args = ConversationArgs {
        key: key.clone(),
        deps: state.args.deps.clone(),
        report: myself.get_derived(),
    };
    let (actor, _) = Actor::spawn_linked(None, Conversation, args, myself.get_cell()).await?;
    state.by_id.insert(actor.get_id(), key.clone());
    state.live.insert(
        key,
        Entry {
            actor: actor.clone(),
            last_routed: Instant::now(),
        },
    );
    Ok(actor)
}

async fn route(myself: &ActorRef<RouterMsg>, state: &mut RouterState, rec: InboxRecord) {
    let key = rec.key.clone();
    if let Some((_, buffer)) = state.passivating.get_mut(&key) {
        buffer.push(rec);
        return;
    }
    if let Some(entry) = state.live.get_mut(&key) {
        entry.last_routed = Instant::now();
        match entry.actor.cast(ConversationMsg::Inbound(Box::new(rec))) {
            Ok(()) => return,
            Err(ractor::MessagingErr::SendErr(ConversationMsg::Inbound(rec))) => {
                // It died in between: forget it and start a new one with the returned message.
                state.live.remove(&key);
                respawn_with(myself, state, key, vec![*rec]).await;
                return;
            }
            Err(_) => {
                // The record is durable in the inbox; the new incarnation reloads it.
                state.live.remove(&key);
                respawn_with(myself, state, key, Vec::new()).await;
                return;
            }
        }
    }
    match spawn_conversation(myself, state, key.clone()).await {
        Ok(actor) => {
            // pre_start already loaded it from the inbox if it was committed; the actor dedups.
            let _ = actor.cast(ConversationMsg::Inbound(Box::new(rec)));
        }
        Err(e) => tracing::error!(%key, error = %e, "could not start conversation"),
    }
}
