//! The root supervisor: the top of Sandra's actor tree.
//!
//! ```text
//! Root ─┬─ Sender          (one per business number; paces and retries Graph calls)
//!       ├─ Transcription   (when a Whisper model is configured; hears voice notes)
//!       ├─ Vision          (when the OCR model is installed; looks at photos and documents)
//!       ├─ Speech          (when a voice is installed; speaks voice replies for the sender)
//!       └─ Router ── Conversation × N   (one per chat, spawned on demand, passivated when idle)
//! ```
//!
//! - Owns: one [`Singleton`] per child: how to spawn it again and the [`ActorSlot`] through
//!   which everyone else reaches it.
//! - Takes: supervision events only.
//! - Never: lets a child's failure stop it. A failed child is re-created from its arguments
//!   (ractor has no restart strategy: restart means spawn again) and its slot updated; the
//!   router and sender rebuild their state from the store, the transcription and vision actors
//!   keep their loaded models (the model thread survives a failed job; see `ModelWorker`).
//!
//! Children start in order: the sender and the model actors before the router, because the
//! router replays unanswered messages at once and their conversations need both; speech before
//! the sender, which may find voice replies in the outbox at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

use crate::slot::ActorSlot;

type SpawnFuture = Pin<Box<dyn Future<Output = Result<ActorId, SpawnErr>> + Send>>;

/// A child of the root that exists once: spawned at start, re-created when it exits.
#[derive(Clone)]
pub struct Singleton {
    pub name: &'static str,
    spawn: Arc<dyn Fn(ActorCell) -> SpawnFuture + Send + Sync>,
}

impl Singleton {
    /// A singleton spawned from `args` (cloned for each incarnation), published in `slot`.
    pub fn new<A>(name: &'static str, actor: A, args: A::Arguments, slot: ActorSlot<A::Msg>) -> Self
    where
        A: Actor + Clone,
        A::Arguments: Clone + Sync,
    {
        let spawn = move |root: ActorCell| -> SpawnFuture {
            let (actor, args, slot) = (actor.clone(), args.clone(), slot.clone());
            Box::pin(async move {
                let (r, _) = Actor::spawn_linked(None, actor, args, root).await?;
                let id = r.get_id();
                slot.set(r);
                Ok(id)
            })
        };
        Self {
            name,
            spawn: Arc::new(spawn),
        }
    }
}

pub struct Root;

#[derive(Clone)]
pub struct RootArgs {
    /// In start order.
    pub children: Vec<Singleton>,
    /// Set by `System::shutdown` before it stops the children: their exits are then expected,
    /// and re-creating them would restart work (an inbox replay) in a process that is exiting.
    pub stopping: Arc<AtomicBool>,
}

pub struct RootState {
    args: RootArgs,
    /// The live incarnation of each child, by index into `args.children`.
    ids: Vec<Option<ActorId>>,
}

impl Actor for Root {
    type Msg = ();
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut ids = Vec::with_capacity(args.children.len());
        for child in &args.children {
            ids.push(Some((child.spawn)(myself.get_cell()).await?));
        }
        Ok(RootState { args, ids })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        evt: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if state.args.stopping.load(Ordering::SeqCst) {
            tracing::debug!(reason = %why, "child stopped at shutdown");
            return Ok(());
        }
        let id = cell.get_id();
        let Some(i) = state.ids.iter().position(|c| *c == Some(id)) else {
            return Ok(());
        };
        let child = &state.args.children[i];
        tracing::error!(child = child.name, reason = %why, "child exited; re-creating it");
        state.ids[i] = Some((child.spawn)(myself.get_cell()).await?);
        Ok(())
    }
}
