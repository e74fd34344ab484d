//! Groups on the memory backend: the shared [`GroupIndex`] under one lock.
//!
//! Lock order: the group index, then the agent map, then one inbox at a time;
//! nothing holds an inbox or an agent entry while taking the group lock.

use super::*;
use crate::store::group_index::GroupIndex;

impl MemoryStore {
    pub(super) fn groups_create(&self, group: Group, now: Millis) -> StoreResult<()> {
        let mut index = self.groups.lock();
        if !self.agents.contains_key(&group.created_by) {
            return Err(StoreError::AgentNotFound);
        }
        index.create(group, now)
    }

    pub(super) fn groups_add_member(&self, group_id: &str, member: GroupMember) -> StoreResult<()> {
        let mut index = self.groups.lock();
        index.check_add(group_id, &member.agent_id)?;
        if !self.agents.contains_key(&member.agent_id) {
            return Err(StoreError::AgentNotFound);
        }
        index.add(group_id, member)
    }

    pub(super) fn groups_post(&self, mut post: GroupPost, fan: FanOut) -> StoreResult<Posted> {
        let mut index = self.groups.lock();
        if let Some(existing) = index.precheck_post(&post)? {
            return Ok(Posted::Duplicate(existing));
        }
        let mut recipients = Vec::new();
        for agent_id in index.recipients(&post) {
            let (Some(agent), Some(inbox)) = (self.agents.get(&agent_id), self.inbox(&agent_id))
            else {
                continue;
            };
            let full = inbox.lock().live >= fan.quota;
            recipients.push(Recipient {
                push: agent.webhook_url.is_some(),
                agent_id,
                full,
            });
        }
        let plan = plan_fan_out(&mut post, &fan, recipients);
        if plan.copies.iter().any(|c| self.owners.contains_key(&c.id)) {
            return Err(StoreError::MessageIdTaken);
        }
        for copy in plan.copies {
            let inbox = self.inbox(&copy.recipient).expect("looked up above");
            self.owners.insert(copy.id.clone(), copy.recipient.clone());
            let mut inbox = inbox.lock();
            self.insert_message(&mut inbox, copy);
        }
        if !plan.deliveries.is_empty() {
            let mut book = self.deliveries.lock();
            for d in plan.deliveries {
                book.insert(d);
            }
        }
        index.record_post(post.clone());
        Ok(Posted::Created(post))
    }

    pub(super) fn groups_purge(&self, now: Millis, limit: usize) -> u64 {
        let mut index = self.groups.lock();
        let expired = index.expired_posts(now, limit);
        for p in &expired {
            index.remove_post(&p.group_id, p.created_at, &p.id);
        }
        expired.len() as u64
    }

    pub(super) fn groups_index(&self) -> parking_lot::MutexGuard<'_, GroupIndex> {
        self.groups.lock()
    }
}
