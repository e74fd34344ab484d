//! What the operator console may do beyond the protocol's own operations:
//! check its login key, requeue every dead letter of an inbox, and make a
//! webhook delivery due now. The HTTP side lives in `api::console`.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Hub, HubError, HubResult};
use crate::store::{Delivery, DeliveryState};

/// Dead letters one "requeue all" moves at most (the page says when more remain).
pub const MAX_REQUEUE_ALL: usize = 1_000;

/// Which key opened a console session: recorded as the actor of its changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleKey {
    Master,
    Console,
}

impl ConsoleKey {
    /// The audit `actor` of changes made in a session opened with this key.
    pub fn actor(self) -> &'static str {
        match self {
            ConsoleKey::Master => "console:master",
            ConsoleKey::Console => "console:console-key",
        }
    }
}

impl Hub {
    /// The key `given` is, if it opens the console (compared in constant time).
    pub fn console_key(&self, given: &str) -> Option<ConsoleKey> {
        if self.is_master_key(given) {
            return Some(ConsoleKey::Master);
        }
        let console = self.config.console_api_key.as_deref()?;
        let matches: bool = Sha256::digest(given.as_bytes())
            .ct_eq(&Sha256::digest(console.as_bytes()))
            .into();
        matches.then_some(ConsoleKey::Console)
    }

    /// Requeues up to [`MAX_REQUEUE_ALL`] of an inbox's dead letters, oldest
    /// first; returns how many moved and whether some remain.
    pub async fn requeue_all_dead(&self, agent_id: &str) -> HubResult<(usize, bool)> {
        let mut moved = 0;
        while moved < MAX_REQUEUE_ALL {
            let page = self
                .store
                .list_dead(agent_id, 100.min(MAX_REQUEUE_ALL - moved), None)
                .await?;
            if page.items.is_empty() {
                return Ok((moved, false));
            }
            for message in page.items {
                self.store
                    .requeue_dead(agent_id, &message.id, self.now())
                    .await?;
                moved += 1;
            }
            self.wakers.wake(agent_id);
        }
        let more = !self
            .store
            .list_dead(agent_id, 1, None)
            .await?
            .items
            .is_empty();
        Ok((moved, more))
    }

    /// Makes a pending or failed delivery due now and wakes the worker.
    pub async fn retry_delivery_now(&self, delivery_id: &str) -> HubResult<Delivery> {
        let delivery = self
            .store
            .retry_delivery(delivery_id, self.now())
            .await?
            .ok_or_else(|| HubError::invalid("delivery_id", "no such delivery"))?;
        if delivery.state != DeliveryState::Pending {
            return Err(HubError::invalid(
                "delivery_id",
                format!("the delivery is {}", delivery.state.as_str()),
            ));
        }
        self.webhook_wake.notify_one();
        Ok(delivery)
    }
}
