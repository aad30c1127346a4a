//! A shared, replaceable reference to a singleton actor.
//!
//! When a supervisor re-creates a failed singleton (router, sender), everyone holding the old
//! `ActorRef` would be talking to a dead actor. Holders keep an [`ActorSlot`] instead and read
//! the current reference at each use; the supervisor swaps it in after a restart.

use std::sync::{Arc, RwLock};

use ractor::ActorRef;

pub struct ActorSlot<M>(Arc<RwLock<Option<ActorRef<M>>>>);

impl<M> Clone for ActorSlot<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M> Default for ActorSlot<M> {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(None)))
    }
}

impl<M: Send + 'static> ActorSlot<M> {
    pub fn set(&self, r: ActorRef<M>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    /// The current actor. Panics if the slot was never filled (a wiring bug at start-up).
    pub fn get(&self) -> ActorRef<M> {
        self.try_get()
            .expect("actor slot used before its actor was spawned")
    }

    pub fn try_get(&self) -> Option<ActorRef<M>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
