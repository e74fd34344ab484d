//! Per-inbox notifiers that wake long-polls when a message becomes available.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Notify;

/// One `Notify` per inbox that someone has waited on.
#[derive(Default)]
pub struct InboxWakers {
    inboxes: DashMap<String, Arc<Notify>>,
}

impl InboxWakers {
    /// The notifier of `agent_id`, created on first use.
    pub fn get(&self, agent_id: &str) -> Arc<Notify> {
        if let Some(n) = self.inboxes.get(agent_id) {
            return n.clone();
        }
        self.inboxes
            .entry(agent_id.to_string())
            .or_default()
            .clone()
    }

    /// The notifier of `agent_id` if one exists: lets a waiter notice that
    /// its agent was deleted without creating a notifier for it again.
    pub fn peek(&self, agent_id: &str) -> Option<Arc<Notify>> {
        self.inboxes.get(agent_id).map(|n| n.clone())
    }

    /// Wakes every long-poll waiting on `agent_id` (cheap when nobody waits).
    pub fn wake(&self, agent_id: &str) {
        if let Some(n) = self.inboxes.get(agent_id) {
            n.notify_waiters();
        }
    }

    /// Wakes every long-poll: after a lost cross-instance notification
    /// channel, when any inbox may have changed unseen.
    pub fn wake_all(&self) {
        for n in self.inboxes.iter() {
            n.value().notify_waiters();
        }
    }

    /// Forgets a deleted agent's notifier after waking its waiters.
    pub fn remove(&self, agent_id: &str) {
        if let Some((_, n)) = self.inboxes.remove(agent_id) {
            n.notify_waiters();
        }
    }
}
