//! The console's listings and its "retry now" on the Mech backend, served
//! from the in-process index like every other read (see `inproc_console`).

use super::*;
use crate::store::inproc_console::{IdSearch, dead_across, failing_page, retried};

impl MechStore {
    /// See [`Store::search_agents`].
    pub(super) fn console_search_agents(
        &self,
        prefix: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Page<Agent> {
        let mut search = IdSearch::new(prefix, limit, cursor);
        for agent in self.agents.iter() {
            search.offer(agent.key());
        }
        let (ids, next_cursor) = search.finish();
        let items = ids
            .iter()
            .filter_map(|id| self.agents.get(id).map(|a| a.value().clone()))
            .collect();
        Page { items, next_cursor }
    }

    /// See [`Store::list_dead_all`].
    pub(super) fn console_dead_all(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Message>> {
        dead_across(&self.all_cells(), |cell| &cell.state, limit, cursor)
    }

    /// See [`Store::list_failing_deliveries`].
    pub(super) fn console_failing(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<Delivery>> {
        failing_page(&self.deliveries.lock().deliveries, limit, cursor)
    }

    /// See [`Store::retry_delivery`]: written to Mech first, then to the index.
    pub(super) async fn console_retry(
        &self,
        delivery_id: &str,
        now: Millis,
    ) -> StoreResult<Option<Delivery>> {
        let _writer = self.delivery_writer.lock().await;
        let Some(current) = self.deliveries.lock().deliveries.get(delivery_id).cloned() else {
            return Ok(None);
        };
        let next = retried(current.clone(), now);
        if next == current {
            return Ok(Some(current));
        }
        self.write_delivery(&next, true).await?;
        self.deliveries.lock().put(next.clone());
        Ok(Some(next))
    }
}
