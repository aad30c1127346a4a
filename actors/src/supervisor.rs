//! The root supervisor: the top of Sandra's actor tree.
//!
//! ```text
//! Root ─┬─ Sender            (one per business number; paces and retries Graph calls)
//!       ├─ Router ── Conversation × N   (one per chat, spawned on demand, passivated when idle)
//!       └─ (slots for the transcription and vision actors, added by their issues)
//! ```
//!
//! - Owns: the arguments needed to re-create each singleton, and the [`ActorSlot`]s through
//!   which everyone else reaches them.
//! - Takes: supervision events only.
//! - Never: lets a child's failure stop it. A failed child is re-created from its arguments
//!   (ractor has no restart strategy: restart means spawn again) and its slot updated; the
//!   router and sender rebuild their state from the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::router::{Router, RouterArgs, RouterMsg};
use crate::sender::{Sender, SenderArgs, SenderMsg};
use crate::slot::ActorSlot;

pub struct Root;

#[derive(Clone)]
pub struct RootArgs {
    pub router: RouterArgs,
    pub sender: SenderArgs,
    pub router_slot: ActorSlot<RouterMsg>,
    pub sender_slot: ActorSlot<SenderMsg>,
    /// Set by `System::shutdown` before it stops the children: their exits are then expected,
    /// and re-creating them would restart work (an inbox replay) in a process that is exiting.
    pub stopping: Arc<AtomicBool>,
}

pub struct RootState {
    args: RootArgs,
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
        let (sender, _) =
            Actor::spawn_linked(None, Sender, args.sender.clone(), myself.get_cell()).await?;
        args.sender_slot.set(sender);
        let (router, _) =
            Actor::spawn_linked(None, Router, args.router.clone(), myself.get_cell()).await?;
        args.router_slot.set(router);
        Ok(RootState { args })
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
        let id = cell.get_id();
        let a = &state.args;
        if a.stopping.load(Ordering::SeqCst) {
            tracing::debug!(reason = %why, "child stopped at shutdown");
            return Ok(());
        }
        if a.router_slot.try_get().is_some_and(|r| r.get_id() == id) {
            tracing::error!(reason = %why, "router exited; re-creating it");
            let (router, _) =
                Actor::spawn_linked(None, Router, a.router.clone(), myself.get_cell()).await?;
            a.router_slot.set(router);
        } else if a.sender_slot.try_get().is_some_and(|s| s.get_id() == id) {
            tracing::error!(reason = %why, "sender exited; re-creating it");
            let (sender, _) =
                Actor::spawn_linked(None, Sender, a.sender.clone(), myself.get_cell()).await?;
            a.sender_slot.set(sender);
        }
        Ok(())
    }
}
