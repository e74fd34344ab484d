//! The console's listings for the in-process indexes (memory and Mech
//! backends): agent search, dead letters across inboxes, failing deliveries.
//!
//! Both backends hold every record in process, so these walk in-memory maps
//! and never do I/O. Their cost (docs/CONSOLE.md): agent search and failing
//! deliveries visit each agent id / delivery once per page (a bounded
//! selection, no sort of the whole set); dead letters take at most one page
//! of index keys from each inbox's dead-letter index (O(inboxes · log n)),
//! never touching live messages.

use parking_lot::Mutex;

use super::memory::{Inbox, IndexKey, parse_cursor};
use super::*;

/// Picks one page of agent ids that start with `prefix`, after `cursor`,
/// from ids offered one at a time in any order (keeps `limit + 1` at most).
pub(super) struct IdSearch<'a> {
    prefix: &'a str,
    cursor: Option<&'a str>,
    limit: usize,
    picked: std::collections::BinaryHeap<String>,
}

impl<'a> IdSearch<'a> {
    /// A search for one page.
    pub(super) fn new(prefix: &'a str, limit: usize, cursor: Option<&'a str>) -> Self {
        IdSearch {
            prefix,
            cursor,
            limit,
            picked: std::collections::BinaryHeap::new(),
        }
    }

    /// Considers one id.
    pub(super) fn offer(&mut self, id: &str) {
        if !id.starts_with(self.prefix) || self.cursor.is_some_and(|c| id <= c) {
            return;
        }
        if self.picked.len() > self.limit
            && self.picked.peek().is_some_and(|max| id >= max.as_str())
        {
            return;
        }
        self.picked.push(id.to_string());
        if self.picked.len() > self.limit + 1 {
            self.picked.pop();
        }
    }

    /// The page's ids in order, and the cursor of the next page.
    pub(super) fn finish(self) -> (Vec<String>, Option<String>) {
        let mut ids = self.picked.into_sorted_vec();
        let next = if ids.len() > self.limit {
            ids.truncate(self.limit);
            ids.last().cloned()
        } else {
            None
        };
        (ids, next)
    }
}

/// One page of dead letters across `inboxes`, oldest first (cursor `<ended_at>.<seq>`).
pub(super) fn dead_across<T>(
    inboxes: &[T],
    lock: impl Fn(&T) -> &Mutex<Inbox>,
    limit: usize,
    cursor: Option<&str>,
) -> StoreResult<Page<Message>> {
    let after = match cursor {
        Some(c) => Some(parse_cursor(c).ok_or(StoreError::InvalidCursor)?),
        None => None,
    };
    let mut keys: Vec<(IndexKey, usize, String)> = Vec::new();
    for (i, inbox) in inboxes.iter().enumerate() {
        let found = lock(inbox).lock().dead_keys(after, limit + 1);
        keys.extend(found.into_iter().map(|(k, id)| (k, i, id)));
        // Keep only the candidates that can still make the page.
        if keys.len() > 4 * (limit + 1) {
            keys.sort_unstable_by_key(|(k, _, _)| *k);
            keys.truncate(limit + 1);
        }
    }
    keys.sort_unstable_by_key(|(k, _, _)| *k);
    keys.truncate(limit + 1);
    let next_cursor = (keys.len() > limit)
        .then(|| {
            keys.get(limit - 1)
                .map(|((at, seq), _, _)| format!("{at}.{seq}"))
        })
        .flatten();
    keys.truncate(limit);
    let items = keys
        .into_iter()
        .filter_map(|(_, i, id)| {
            let inbox = lock(&inboxes[i]).lock();
            inbox
                .messages
                .get(&id)
                .filter(|s| s.message.state == MessageState::Dead)
                .map(|s| s.message.clone())
        })
        .collect();
    Ok(Page { items, next_cursor })
}

/// True when a delivery's last attempt failed (the console's "failing" list).
pub(super) fn is_failing(d: &Delivery) -> bool {
    d.state == DeliveryState::Failed || (d.state == DeliveryState::Pending && d.attempts > 0)
}

/// One page of failing deliveries, newest update first (cursor `<updated_at>.<id>`).
pub(super) fn failing_page(
    deliveries: &std::collections::HashMap<String, Delivery>,
    limit: usize,
    cursor: Option<&str>,
) -> StoreResult<Page<Delivery>> {
    let before = cursor.map(parse_pair_cursor).transpose()?;
    // Ordered so that the heap's maximum is the entry to drop (the oldest).
    let mut picked = std::collections::BinaryHeap::new();
    for d in deliveries.values() {
        if !is_failing(d)
            || before.is_some_and(|(at, id)| (d.updated_at, d.id.as_str()) >= (at, id))
        {
            continue;
        }
        picked.push((
            std::cmp::Reverse(d.updated_at),
            std::cmp::Reverse(d.id.as_str()),
        ));
        if picked.len() > limit + 1 {
            picked.pop();
        }
    }
    let mut items: Vec<Delivery> = picked
        .into_sorted_vec()
        .into_iter()
        .filter_map(|(_, std::cmp::Reverse(id))| deliveries.get(id).cloned())
        .collect();
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|d| format!("{}.{}", d.updated_at, d.id))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// What "retry now" makes of a delivery: due at `now` if it was pending or failed.
pub(super) fn retried(mut d: Delivery, now: Millis) -> Delivery {
    if matches!(d.state, DeliveryState::Pending | DeliveryState::Failed) {
        d.state = DeliveryState::Pending;
        d.next_attempt_at = now;
        d.updated_at = now;
    }
    d
}
