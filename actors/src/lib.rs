//! `sandra-actors`: Sandra's actor system and its domain.
//!
//! # Layout
//! - [`ingest`]: a webhook body in, durable messages out: verify → parse → accept → route
//!   ([`System::ingest`]).
//! - [`whatsapp`]: webhook payload parsing (non-exhaustive) and the domain types routed on.
//! - [`store`]: the only code that touches sled: dedup, inbox, sessions, outbox.
//! - [`supervisor`]: the root of the tree; re-creates the router and sender when they fail.
//! - [`router`]: one [`conversation`] actor per chat; passivation, crash restart, replay.
//! - [`conversation`]: session state, turn taking, commands; asks a [`brain`] for replies.
//! - [`clock`]: the date and time where the user is, for the prompt (zone from the number).
//! - [`limits`]: allow/block lists, per-sender rate limits and per-turn caps, shared by all chats.
//! - [`sender`]: the durable outbox drained to the Graph API at Meta's pace ([`graph`]).
//! - [`transcription`], [`vision`]: the model actors that hear voice notes and look at photos
//!   and documents for the conversations.
//!
//! This crate binds no sockets and reads no config files or environment: everything arrives as
//! actor arguments from the `sandra` binary.

#![forbid(unsafe_code)]

pub mod accounts;
pub mod at_rest;
pub mod brain;
pub mod clock;
pub mod conversation;
pub mod graph;
pub mod ingest;
pub mod limits;
pub mod llm_brain;
pub mod mailer;
pub mod media;
pub mod metrics;
pub mod playground;
pub mod router;
pub mod secret;
pub mod sender;
pub mod session;
pub mod slot;
pub mod speech;
pub mod store;
pub mod supervisor;
pub mod texts;
pub mod transcription;
pub mod vision;
pub mod whatsapp;

use std::sync::Arc;

use ractor::{Actor, ActorRef, SpawnErr};

pub use ractor;

/// Handles to a running actor system.
#[derive(Clone)]
pub struct System {
    root: ActorRef<()>,
    pub router: slot::ActorSlot<router::RouterMsg>,
    pub sender: slot::ActorSlot<sender::SenderMsg>,
    /// Where the sender finds the speech actor (`None`: no voice installed).
    pub speech: Option<slot::ActorSlot<speech::SpeechMsg>>,
    pub store: Arc<store::Store>,
    metrics: Arc<metrics::Metrics>,
    pub sender_health: Arc<sender::SenderHealth>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The access token every Graph client reads; SIGHUP replaces it here, once.
    pub credentials: secret::Credentials,
    ingest: Arc<ingest::Ingest>,
    playground: playground::Playground,
}

impl System {
    /// Starts the tree: root, sender, transcription, vision and speech (when configured),
    /// router (which replays unanswered messages), and the ingestion service in front of the
    /// router. The model actors are published in the slots the conversations read
    /// (`router.deps.run.transcription`, `router.deps.run.vision`) and the sender reads
    /// (`sender.speech`). Speech starts before the sender, which may find voice records to send
    /// at once.
    pub async fn start(
        router: router::RouterArgs,
        sender: sender::SenderArgs,
        transcription: Option<transcription::TranscriptionArgs>,
        vision: Option<vision::VisionArgs>,
        speech: Option<speech::SpeechArgs>,
        ingest: ingest::IngestConfig,
    ) -> Result<Self, SpawnErr> {
        let router_slot = slot::ActorSlot::default();
        let sender_slot = router.deps.run.sender.clone();
        let mut children = Vec::new();
        match (speech, &sender.speech) {
            (Some(args), Some(slot)) => children.push(supervisor::Singleton::new(
                "speech",
                speech::Speech,
                args,
                slot.clone(),
            )),
            (None, None) => {}
            _ => {
                return Err(SpawnErr::StartupFailed(
                    "speech arguments and slot must be given together".into(),
                ));
            }
        }
        children.push(supervisor::Singleton::new(
            "sender",
            sender::Sender,
            sender.clone(),
            sender_slot.clone(),
        ));
        match (transcription, &router.deps.run.transcription) {
            (Some(args), Some(slot)) => children.push(supervisor::Singleton::new(
                "transcription",
                transcription::Transcription,
                args,
                slot.clone(),
            )),
            (None, None) => {}
            _ => {
                return Err(SpawnErr::StartupFailed(
                    "transcription arguments and slot must be given together".into(),
                ));
            }
        }
        match (vision, &router.deps.run.vision) {
            (Some(args), Some(slot)) => children.push(supervisor::Singleton::new(
                "vision",
                vision::VisionActor,
                args,
                slot.clone(),
            )),
            (None, None) => {}
            _ => {
                return Err(SpawnErr::StartupFailed(
                    "vision arguments and slot must be given together".into(),
                ));
            }
        }
        children.push(supervisor::Singleton::new(
            "router",
            router::Router,
            router.clone(),
            router_slot.clone(),
        ));
        let args = supervisor::RootArgs {
            children,
            stopping: Arc::default(),
        };
        let stopping = args.stopping.clone();
        let (root, _) = Actor::spawn(None, supervisor::Root, args).await?;
        let ingest = ingest::Ingest::new(
            ingest,
            router.deps.store.clone(),
            router_slot.clone(),
            router.deps.metrics.clone(),
        );
        // Bounded by the brain's own limit (a voice note is heard first, then answered).
        let playground = playground::Playground::new(
            sender.graph.local().clone(),
            router.deps.store.clone(),
            router_slot.clone(),
            router.deps.policy.brain_timeout * 2 + std::time::Duration::from_secs(30),
        );
        Ok(Self {
            root,
            router: router_slot,
            sender: sender_slot,
            speech: sender.speech.clone(),
            store: router.deps.store.clone(),
            metrics: router.deps.metrics.clone(),
            sender_health: sender.health.clone(),
            stopping,
            credentials: sender.graph.credentials().clone(),
            ingest: Arc::new(ingest),
            playground,
        })
    }

    /// A local channel into the same conversations, without WhatsApp (see [`playground`]).
    pub fn playground(&self) -> &playground::Playground {
        &self.playground
    }

    /// Verifies, parses, stores durably and routes one webhook body (see [`ingest`]).
    pub async fn ingest(
        &self,
        body: bytes::Bytes,
        signature: Option<&str>,
    ) -> Result<ingest::Ingested, ingest::IngestError> {
        self.ingest.ingest(body, signature).await
    }

    /// The metrics every part of this system counts into.
    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.metrics
    }

    /// Prometheus text of every metric, with the store's gauges read now.
    pub fn render_metrics(&self) -> String {
        self.metrics
            .outbox_pending
            .set(self.store.outbox_pending_count() as f64);
        self.metrics
            .dead_letters
            .set(self.store.dead_letter_count() as f64);
        self.metrics.render()
    }

    /// True while the sender knows the access token to be invalid or expired (error 190).
    pub fn token_invalid(&self) -> bool {
        self.sender_health
            .token_invalid
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// True while the router and sender actors are running.
    pub fn actors_up(&self) -> bool {
        let up = |s: Option<ractor::ActorCell>| {
            s.is_some_and(|c| c.get_status() == ractor::ActorStatus::Running)
        };
        up(self.router.try_get().map(|r| r.get_cell()))
            && up(self.sender.try_get().map(|r| r.get_cell()))
    }

    /// Stops every actor (draining conversations) and flushes the store.
    pub async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self
            .root
            .stop_children_and_wait(None, Some(std::time::Duration::from_secs(10)))
            .await;
        self.root.stop(None);
        if let Err(e) = self.store.close().await {
            tracing::error!(error = %e, "flushing the store at shutdown failed");
        }
    }
}
