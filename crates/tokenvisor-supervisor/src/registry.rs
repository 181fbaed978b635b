//! The process-wide registry of connections the supervisor knows: the running actor,
//! the token it last published (read without a message on the hot path), and the
//! per-connection refresh lock that outlives actor restarts.

use crate::connection::ConnectionMsg;
use crate::token::AccessToken;
use ractor::ActorRef;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokenvisor_core::{ConnectionId, ConnectionStatus};

/// Where a connection stands in this process.
#[derive(Debug, Clone)]
pub(crate) enum SlotState {
    /// Its actor runs.
    Running(ActorRef<ConnectionMsg>),
    /// Being (re)started.
    Starting,
    /// Not supervised any more (needs re-authorization, disabled).
    Inactive(ConnectionStatus),
}

/// One connection's entry.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    token: RwLock<Option<AccessToken>>,
    /// The status its running actor last reported (for the connections gauge).
    observed_status: Mutex<ConnectionStatus>,
    /// Held by the one refresh in flight for this connection; holds the version of
    /// the last row this process committed for it.
    pub(crate) refresh_lock: Arc<tokio::sync::Mutex<i64>>,
}

impl Slot {
    fn new(state: SlotState, version: i64) -> Self {
        Self {
            state: Mutex::new(state),
            token: RwLock::new(None),
            observed_status: Mutex::new(ConnectionStatus::Active),
            refresh_lock: Arc::new(tokio::sync::Mutex::new(version)),
        }
    }

    pub(crate) fn state(&self) -> SlotState {
        lock(&self.state).clone()
    }

    pub(crate) fn set_state(&self, state: SlotState) {
        *lock(&self.state) = state;
    }

    /// The published token, if any.
    pub(crate) fn token(&self) -> Option<AccessToken> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The status the running actor last reported.
    pub(crate) fn observed_status(&self) -> ConnectionStatus {
        *lock(&self.observed_status)
    }

    /// The running actor reports its connection's status (active or degraded).
    pub(crate) fn set_observed_status(&self, status: ConnectionStatus) {
        *lock(&self.observed_status) = status;
    }

    /// Publishes a token that is committed to the store (invariant 2), or clears it.
    pub(crate) fn publish(&self, token: Option<AccessToken>) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// All slots.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    slots: RwLock<HashMap<ConnectionId, Arc<Slot>>>,
}

impl Registry {
    pub(crate) fn get(&self, id: ConnectionId) -> Option<Arc<Slot>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// The slot of `id`, created in `state` if missing.
    pub(crate) fn get_or_insert(&self, id: ConnectionId, state: SlotState, version: i64) -> Arc<Slot> {
        // Every refresh looks its slot up: take the write lock (which stalls the token
        // hot path's readers) only when the slot is missing.
        if let Some(slot) = self.get(id) {
            return slot;
        }
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(id)
            .or_insert_with(|| Arc::new(Slot::new(state, version)))
            .clone()
    }

    pub(crate) fn remove(&self, id: ConnectionId) -> Option<Arc<Slot>> {
        self.slots.write().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    pub(crate) fn running(&self) -> Vec<(ConnectionId, ActorRef<ConnectionMsg>)> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .filter_map(|(id, slot)| match slot.state() {
                SlotState::Running(actor) => Some((*id, actor)),
                _ => None,
            })
            .collect()
    }

    /// Every slot (a snapshot).
    pub(crate) fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}
