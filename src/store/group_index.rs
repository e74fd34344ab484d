//! The in-process group index shared by the memory and Mech backends: groups,
//! one record per member, an agent → groups index, and per-group history
//! ordered by time with its TTL and idempotency indexes. Callers hold it
//! under one lock for a whole operation, which makes each operation atomic
//! (and `max_members` exact) in process.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::*;

/// History key: newest last in the map, read in reverse.
type PostKey = (Millis, String);

/// See the module docs.
#[derive(Default)]
pub(super) struct GroupIndex {
    groups: HashMap<String, Group>,
    /// group id → agent id → membership.
    members: HashMap<String, BTreeMap<String, GroupMember>>,
    /// agent id → group ids.
    by_agent: HashMap<String, BTreeSet<String>>,
    /// group id → posts by (created_at, id).
    history: HashMap<String, BTreeMap<PostKey, GroupPost>>,
    /// (expires_at, group id, created_at, post id) for the purge.
    expiry: BTreeSet<(Millis, String, Millis, String)>,
    /// (group id, idempotency key) → post key.
    keys: HashMap<(String, String), PostKey>,
}

impl GroupIndex {
    /// A group with its member count.
    pub(super) fn group(&self, group_id: &str) -> Option<Group> {
        let mut group = self.groups.get(group_id)?.clone();
        group.member_count = self.members.get(group_id).map_or(0, |m| m.len() as u64);
        Some(group)
    }

    /// Inserts a group and its owner; the caller checked the owner exists.
    pub(super) fn create(&mut self, group: Group, now: Millis) -> StoreResult<()> {
        if self.groups.contains_key(&group.id) {
            return Err(StoreError::GroupExists);
        }
        let owner = GroupMember {
            agent_id: group.created_by.clone(),
            role: GroupRole::Owner,
            joined_at: now,
        };
        let id = group.id.clone();
        self.groups.insert(id.clone(), group);
        self.members.insert(id.clone(), BTreeMap::new());
        self.insert_member(&id, owner);
        Ok(())
    }

    /// Applies a change.
    pub(super) fn update(&mut self, group_id: &str, change: &GroupChange) -> StoreResult<Group> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(StoreError::GroupNotFound)?;
        change.apply(group);
        Ok(self.group(group_id).expect("just updated"))
    }

    /// Removes a group with its members and history; returns the removed group.
    pub(super) fn delete(&mut self, group_id: &str) -> Option<Group> {
        let group = self.groups.remove(group_id)?;
        for agent_id in self.members.remove(group_id).unwrap_or_default().keys() {
            self.unindex_agent(agent_id, group_id);
        }
        for (_, post) in self.history.remove(group_id).unwrap_or_default() {
            self.forget_post_indexes(&post);
        }
        Some(group)
    }

    fn unindex_agent(&mut self, agent_id: &str, group_id: &str) {
        if let Some(set) = self.by_agent.get_mut(agent_id) {
            set.remove(group_id);
            if set.is_empty() {
                self.by_agent.remove(agent_id);
            }
        }
    }

    fn forget_post_indexes(&mut self, post: &GroupPost) {
        self.expiry.remove(&(
            post.expires_at,
            post.group_id.clone(),
            post.created_at,
            post.id.clone(),
        ));
        if let Some(key) = &post.idempotency_key {
            self.keys.remove(&(post.group_id.clone(), key.clone()));
        }
    }

    /// One membership.
    pub(super) fn member(&self, group_id: &str, agent_id: &str) -> Option<GroupMember> {
        self.members.get(group_id)?.get(agent_id).cloned()
    }

    /// Members by agent id.
    pub(super) fn members(&self, group_id: &str) -> Vec<GroupMember> {
        self.members
            .get(group_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Inserts a membership record as is (no checks: the Mech index rebuild).
    pub(super) fn insert_member(&mut self, group_id: &str, member: GroupMember) {
        self.by_agent
            .entry(member.agent_id.clone())
            .or_default()
            .insert(group_id.to_string());
        self.members
            .entry(group_id.to_string())
            .or_default()
            .insert(member.agent_id.clone(), member);
    }

    /// Adds a member if the group has room (checked against the current count).
    pub(super) fn check_add(&self, group_id: &str, agent_id: &str) -> StoreResult<()> {
        let group = self.groups.get(group_id).ok_or(StoreError::GroupNotFound)?;
        let members = self.members.get(group_id);
        if members.is_some_and(|m| m.contains_key(agent_id)) {
            return Err(StoreError::AlreadyMember);
        }
        if members.map_or(0, BTreeMap::len) as u64 >= u64::from(group.settings.max_members) {
            return Err(StoreError::GroupFull);
        }
        Ok(())
    }

    /// Adds a member after [`GroupIndex::check_add`].
    pub(super) fn add(&mut self, group_id: &str, member: GroupMember) -> StoreResult<()> {
        self.check_add(group_id, &member.agent_id)?;
        self.insert_member(group_id, member);
        Ok(())
    }

    /// Removes a member.
    pub(super) fn remove(&mut self, group_id: &str, agent_id: &str) -> bool {
        let removed = self
            .members
            .get_mut(group_id)
            .and_then(|m| m.remove(agent_id))
            .is_some();
        if removed {
            self.unindex_agent(agent_id, group_id);
        }
        removed
    }

    /// An agent's groups with its role, by group id, after `after`.
    pub(super) fn agent_groups(
        &self,
        agent_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Vec<(Group, GroupRole)> {
        use std::ops::Bound;
        let Some(ids) = self.by_agent.get(agent_id) else {
            return Vec::new();
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        ids.range::<str, _>((from, Bound::Unbounded))
            .filter_map(|id| Some((self.group(id)?, self.member(id, agent_id)?.role)))
            .take(limit)
            .collect()
    }

    /// What deleting an agent does to groups: its memberships go, and so do
    /// the groups it owns (with their members and history). Returns the ids
    /// of the deleted groups.
    pub(super) fn forget_agent(&mut self, agent_id: &str) -> Vec<String> {
        let ids: Vec<String> = self
            .by_agent
            .get(agent_id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let mut deleted = Vec::new();
        for id in ids {
            if self
                .groups
                .get(&id)
                .is_some_and(|g| g.created_by == agent_id)
            {
                self.delete(&id);
                deleted.push(id);
            } else {
                self.remove(&id, agent_id);
            }
        }
        deleted
    }

    /// The checks a post makes before it fans out: the group exists, the
    /// sender is a member, and the idempotency key (if seen) matches.
    /// `Ok(Some(post))` is a duplicate.
    pub(super) fn precheck_post(&self, post: &GroupPost) -> StoreResult<Option<GroupPost>> {
        if !self.groups.contains_key(&post.group_id) {
            return Err(StoreError::GroupNotFound);
        }
        if self.member(&post.group_id, &post.sender).is_none() {
            return Err(StoreError::NotMember);
        }
        if let Some(key) = &post.idempotency_key
            && let Some(at) = self.keys.get(&(post.group_id.clone(), key.clone()))
        {
            let existing = self
                .history
                .get(&post.group_id)
                .and_then(|h| h.get(at))
                .ok_or_else(|| StoreError::Internal("idempotency index out of step".into()))?;
            return if existing.content_hash == post.content_hash {
                Ok(Some(existing.clone()))
            } else {
                Err(StoreError::IdempotencyConflict)
            };
        }
        Ok(None)
    }

    /// Members a post goes to (all but the sender), by agent id.
    pub(super) fn recipients(&self, post: &GroupPost) -> Vec<String> {
        self.members
            .get(&post.group_id)
            .map(|m| m.keys().filter(|a| **a != post.sender).cloned().collect())
            .unwrap_or_default()
    }

    /// Records a post in the history.
    pub(super) fn record_post(&mut self, post: GroupPost) {
        let key = (post.created_at, post.id.clone());
        if let Some(k) = &post.idempotency_key {
            self.keys
                .insert((post.group_id.clone(), k.clone()), key.clone());
        }
        self.expiry.insert((
            post.expires_at,
            post.group_id.clone(),
            post.created_at,
            post.id.clone(),
        ));
        self.history
            .entry(post.group_id.clone())
            .or_default()
            .insert(key, post);
    }

    /// One page of history, newest first.
    pub(super) fn history(
        &self,
        group_id: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> StoreResult<Page<GroupPost>> {
        let before = match cursor {
            Some(c) => Some(parse_history_cursor(c).ok_or(StoreError::InvalidCursor)?),
            None => None,
        };
        let Some(posts) = self.history.get(group_id) else {
            return Ok(Page {
                items: Vec::new(),
                next_cursor: None,
            });
        };
        let range = match before {
            Some(k) => posts.range(..k),
            None => posts.range::<PostKey, _>(..),
        };
        let mut items: Vec<GroupPost> = range
            .rev()
            .take(limit + 1)
            .map(|(_, p)| p.clone())
            .collect();
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(history_cursor)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Posts past their TTL at `now`, at most `limit`, oldest deadline first.
    pub(super) fn expired_posts(&self, now: Millis, limit: usize) -> Vec<GroupPost> {
        self.expiry
            .iter()
            .take_while(|(at, ..)| *at <= now)
            .take(limit)
            .filter_map(|(_, g, created, id)| {
                self.history.get(g)?.get(&(*created, id.clone())).cloned()
            })
            .collect()
    }

    /// Forgets one post (purge, or a Mech fan-out rolled back).
    pub(super) fn remove_post(&mut self, group_id: &str, created_at: Millis, post_id: &str) {
        let post = self
            .history
            .get_mut(group_id)
            .and_then(|h| h.remove(&(created_at, post_id.to_string())));
        if let Some(post) = post {
            self.forget_post_indexes(&post);
        }
    }
}
