//! The process-wide registry of connections this process knows: the connection's owner
//! (its actor), the token the owner last published (read without a message on the hot
//! path), tokens awaiting their commit, and the per-connection refresh lock that outlives
//! actor restarts.
//!
//! Only the supervisor sets a slot's owner; only the owner publishes its token, its view
//! and its pending tokens (the refresh task it runs writes the pending tokens on its
//! behalf). Everyone else reads.

use crate::connection::{ConnectionMsg, PendingTokens};
use crate::token::AccessToken;
use ractor::ActorRef;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokenvisor_core::{ConnectionId, ConnectionStatus};

/// What the owner last reported about its connection (for metrics and
/// [`crate::Tokenvisor::supervised_count`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotView {
    /// The connection's status; `None` while its owner loads it.
    pub status: Option<ConnectionStatus>,
    /// The owner refreshes this connection (it is not disabled, escalated or removed).
    pub supervising: bool,
}

/// One connection's entry.
#[derive(Debug)]
pub(crate) struct Slot {
    owner: Mutex<Option<ActorRef<ConnectionMsg>>>,
    token: RwLock<Option<AccessToken>>,
    view: Mutex<SlotView>,
    /// Tokens the provider issued whose commit failed: kept here (and in the journal) so
    /// that a restarted owner finds them.
    pending: Mutex<Option<PendingTokens>>,
    /// Held by the one refresh or lifecycle write in flight for this connection; holds
    /// the version of the last row this process committed for it.
    pub(crate) refresh_lock: Arc<tokio::sync::Mutex<i64>>,
}

impl Slot {
    fn new(version: i64) -> Self {
        Self {
            owner: Mutex::new(None),
            token: RwLock::new(None),
            view: Mutex::new(SlotView {
                status: None,
                supervising: false,
            }),
            pending: Mutex::new(None),
            refresh_lock: Arc::new(tokio::sync::Mutex::new(version)),
        }
    }

    /// The running owner, if any.
    pub(crate) fn owner(&self) -> Option<ActorRef<ConnectionMsg>> {
        lock(&self.owner).clone()
    }

    /// Sets (or clears) the owner. Only the supervisor calls this.
    pub(crate) fn set_owner(&self, owner: Option<ActorRef<ConnectionMsg>>) {
        *lock(&self.owner) = owner;
    }

    /// The published token, if any.
    pub(crate) fn token(&self) -> Option<AccessToken> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes a token that is committed to the store (invariant 2), or clears it.
    pub(crate) fn publish(&self, token: Option<AccessToken>) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// What the owner last reported.
    pub(crate) fn view(&self) -> SlotView {
        *lock(&self.view)
    }

    /// The owner reports its connection's status and whether it supervises it.
    pub(crate) fn set_view(&self, view: SlotView) {
        *lock(&self.view) = view;
    }

    /// Tokens awaiting their commit.
    pub(crate) fn pending(&self) -> Option<PendingTokens> {
        lock(&self.pending).clone()
    }

    /// Whether tokens await their commit.
    pub(crate) fn has_pending(&self) -> bool {
        lock(&self.pending).is_some()
    }

    /// Keeps (or, with `None`, forgets) tokens awaiting their commit; returns what was there.
    pub(crate) fn set_pending(&self, pending: Option<PendingTokens>) -> Option<PendingTokens> {
        std::mem::replace(&mut *lock(&self.pending), pending)
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

    /// The slot of `id`, created if missing (`version`: the last committed version known).
    pub(crate) fn get_or_insert(&self, id: ConnectionId, version: i64) -> Arc<Slot> {
        // Every refresh looks its slot up: take the write lock (which stalls the token
        // hot path's readers) only when the slot is missing.
        if let Some(slot) = self.get(id) {
            return slot;
        }
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        slots.entry(id).or_insert_with(|| Arc::new(Slot::new(version))).clone()
    }

    pub(crate) fn remove(&self, id: ConnectionId) -> Option<Arc<Slot>> {
        self.slots.write().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    /// Every running owner.
    pub(crate) fn owners(&self) -> Vec<(ConnectionId, ActorRef<ConnectionMsg>)> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .filter_map(|(id, slot)| slot.owner().map(|actor| (*id, actor)))
            .collect()
    }

    /// How many connections have an owner that supervises them.
    pub(crate) fn supervised_count(&self) -> usize {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .filter(|slot| slot.view().supervising && slot.owner().is_some())
            .count()
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

    /// The slots of connections in `partitions`.
    pub(crate) fn in_partitions(
        &self,
        partitions: &std::collections::HashSet<tokenvisor_core::Partition>,
    ) -> Vec<(ConnectionId, Arc<Slot>)> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .filter(|(id, _)| partitions.contains(&tokenvisor_core::partition_of(**id)))
            .map(|(id, slot)| (*id, slot.clone()))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}
