//! Groups on Mech: three collections and the shared in-process [`GroupIndex`].
//!
//! Mech has no transactions, so a fan-out is a **bounded batch of writes
//! that either all land or are cleaned up and reported**:
//! 1. the post document is written first, marked `pending`;
//! 2. every copy and webhook delivery is created, at most `MECH_CONCURRENCY`
//!    requests at a time, while the recipients' inbox writer locks are held;
//! 3. the post is marked `complete`; only then do the copies enter the index
//!    (so nobody leases a copy of an incomplete post).
//!
//! If a write fails, the written documents are deleted and the post fails
//! with the error (nothing applied). If the hub dies in between, the next
//! start finds the `pending` post and deletes its copies, deliveries and the
//! post before serving ([`MechStore::load_groups`]): every member has the post
//! or none has. All group writes queue on one writer lock (one hub instance
//! per Mech app, as for the rest of this backend).

use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::*;
use crate::store::group_index::GroupIndex;

/// Mech collection of groups.
pub const GROUPS: &str = "admp_groups";
/// Mech collection of memberships, one document per member.
pub const GROUP_MEMBERS: &str = "admp_group_members";
/// Mech collection of posts (history and fan-out state).
pub const GROUP_POSTS: &str = "admp_group_posts";

/// A membership document.
#[derive(Serialize, Deserialize)]
struct StoredMember {
    group_id: String,
    member: GroupMember,
}

/// A post document: `complete` once every copy landed.
#[derive(Serialize, Deserialize)]
struct StoredPost {
    complete: bool,
    post: GroupPost,
}

/// Document keys: hashes, since group ids hold `://` and agent ids may be long.
fn key(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("{prefix}_{}", hex::encode(&h.finalize()[..16]))
}

fn group_key(group_id: &str) -> String {
    key("g", &[group_id])
}

fn member_key(group_id: &str, agent_id: &str) -> String {
    key("gm", &[group_id, agent_id])
}

fn post_key(post_id: &str) -> String {
    key("gp", &[post_id])
}

/// The in-process group state of a [`MechStore`].
#[derive(Default)]
pub(super) struct MechGroups {
    /// Held across every group write's Mech calls.
    writer: tokio::sync::Mutex<()>,
    index: Mutex<GroupIndex>,
}

impl MechStore {
    /// Loads the group collections into the index at start, first rolling
    /// back fan-outs a crash left `pending` and dropping records of deleted
    /// groups and agents (a crash between the steps of a delete).
    pub(super) async fn load_groups(&self) -> StoreResult<()> {
        let (groups, members, posts) = tokio::try_join!(
            self.client.list_all(GROUPS),
            self.client.list_all(GROUP_MEMBERS),
            self.client.list_all(GROUP_POSTS),
        )?;
        let mut index = GroupIndex::default();
        let mut orphans: Vec<(&'static str, String)> = Vec::new();
        for doc in &groups {
            let group: Group = decode(GROUPS, doc)?;
            if self.agents.contains_key(&group.created_by) {
                index.create(group, 0).ok();
            } else {
                orphans.push((GROUPS, doc.key.clone()));
            }
        }
        // Owners were inserted by `create`; now the stored memberships (owner's included).
        for doc in &members {
            let stored: StoredMember = decode(GROUP_MEMBERS, doc)?;
            let live = index.group(&stored.group_id).is_some()
                && self.agents.contains_key(&stored.member.agent_id);
            if !live {
                orphans.push((GROUP_MEMBERS, doc.key.clone()));
                continue;
            }
            index.remove(&stored.group_id, &stored.member.agent_id);
            index.insert_member(&stored.group_id, stored.member);
        }
        for doc in &posts {
            let stored: StoredPost = decode(GROUP_POSTS, doc)?;
            if !stored.complete {
                self.roll_back_post(&stored.post).await?;
                self.client.delete(GROUP_POSTS, &doc.key).await?;
                tracing::warn!(post = %stored.post.id, group = %stored.post.group_id, "rolled back a group fan-out interrupted by a crash");
            } else if index.group(&stored.post.group_id).is_some() {
                index.record_post(stored.post);
            } else {
                orphans.push((GROUP_POSTS, doc.key.clone()));
            }
        }
        for (collection, key) in orphans {
            self.compensate(collection, &key).await;
        }
        *self.groups.index.lock() = index;
        Ok(())
    }

    /// Deletes whatever copies and deliveries of `post` exist, in Mech and in the index.
    async fn roll_back_post(&self, post: &GroupPost) -> StoreResult<()> {
        let copies: Vec<(String, Option<String>)> = post
            .deliveries
            .iter()
            .map(|d| {
                (
                    d.message_id.clone(),
                    self.owners.get(&d.message_id).map(|o| o.clone()),
                )
            })
            .collect();
        let deliveries: Vec<String> = {
            let book = self.deliveries.lock();
            book.deliveries
                .values()
                .filter(|d| copies.iter().any(|(id, _)| *id == d.message_id))
                .map(|d| d.id.clone())
                .collect()
        };
        for id in &deliveries {
            self.client.delete(DELIVERIES, id).await?;
            let mut book = self.deliveries.lock();
            if let Some(d) = book.deliveries.remove(id) {
                book.due.remove(&(d.next_attempt_at, d.id));
            }
        }
        for (id, owner) in copies {
            self.client.delete(MESSAGES, &id).await?;
            if let Some(owner) = owner {
                if let Some(cell) = self.cell(&owner) {
                    cell.state.lock().remove(&id);
                }
                self.owners.remove(&id);
            }
        }
        Ok(())
    }

    pub(super) fn groups_index(&self) -> parking_lot::MutexGuard<'_, GroupIndex> {
        self.groups.index.lock()
    }

    pub(super) async fn groups_create(&self, group: Group, now: Millis) -> StoreResult<()> {
        let _writer = self.groups.writer.lock().await;
        if !self.agents.contains_key(&group.created_by) {
            return Err(StoreError::AgentNotFound);
        }
        if self.groups_index().group(&group.id).is_some() {
            return Err(StoreError::GroupExists);
        }
        let owner = StoredMember {
            group_id: group.id.clone(),
            member: GroupMember {
                agent_id: group.created_by.clone(),
                role: GroupRole::Owner,
                joined_at: now,
            },
        };
        self.client
            .put(GROUPS, &group_key(&group.id), &to_doc(&group)?, false)
            .await?;
        let mkey = member_key(&group.id, &group.created_by);
        if let Err(e) = self
            .client
            .put(GROUP_MEMBERS, &mkey, &to_doc(&owner)?, false)
            .await
        {
            self.compensate(GROUPS, &group_key(&group.id)).await;
            return Err(e.into());
        }
        let mut index = self.groups_index();
        index.create(group, now)?;
        Ok(())
    }

    pub(super) async fn groups_update(
        &self,
        group_id: &str,
        change: &GroupChange,
    ) -> StoreResult<Group> {
        let _writer = self.groups.writer.lock().await;
        let mut group = self
            .groups_index()
            .group(group_id)
            .ok_or(StoreError::GroupNotFound)?;
        change.apply(&mut group);
        self.client
            .put(GROUPS, &group_key(group_id), &to_doc(&group)?, true)
            .await?;
        self.groups_index().update(group_id, change)
    }

    /// Deletes the group document first (its members and posts without it
    /// are dropped at the next start if a later delete fails), then the rest.
    pub(super) async fn groups_delete(&self, group_id: &str) -> StoreResult<bool> {
        let _writer = self.groups.writer.lock().await;
        self.delete_group_locked(group_id).await
    }

    async fn delete_group_locked(&self, group_id: &str) -> StoreResult<bool> {
        let (members, posts) = {
            let index = self.groups_index();
            if index.group(group_id).is_none() {
                return Ok(false);
            }
            let posts: Vec<String> = index
                .history(group_id, usize::MAX - 1, None)?
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
            (index.members(group_id), posts)
        };
        self.client.delete(GROUPS, &group_key(group_id)).await?;
        self.groups_index().delete(group_id);
        let keys: Vec<(String, String)> = members
            .iter()
            .map(|m| (GROUP_MEMBERS.to_string(), member_key(group_id, &m.agent_id)))
            .chain(posts.iter().map(|p| (GROUP_POSTS.to_string(), post_key(p))))
            .collect();
        stream::iter(keys)
            .map(|(collection, key)| async move {
                let _permit = self.bulk.acquire().await.expect("never closed");
                self.compensate(&collection, &key).await;
            })
            .buffer_unordered(self.concurrency())
            .collect::<Vec<()>>()
            .await;
        Ok(true)
    }

    pub(super) async fn groups_add_member(
        &self,
        group_id: &str,
        member: GroupMember,
    ) -> StoreResult<()> {
        let _writer = self.groups.writer.lock().await;
        self.groups_index().check_add(group_id, &member.agent_id)?;
        if !self.agents.contains_key(&member.agent_id) {
            return Err(StoreError::AgentNotFound);
        }
        let doc = StoredMember {
            group_id: group_id.to_string(),
            member: member.clone(),
        };
        self.client
            .put(
                GROUP_MEMBERS,
                &member_key(group_id, &member.agent_id),
                &to_doc(&doc)?,
                false,
            )
            .await?;
        self.groups_index().add(group_id, member)
    }

    pub(super) async fn groups_remove_member(
        &self,
        group_id: &str,
        agent_id: &str,
    ) -> StoreResult<bool> {
        let _writer = self.groups.writer.lock().await;
        if self.groups_index().member(group_id, agent_id).is_none() {
            return Ok(false);
        }
        self.client
            .delete(GROUP_MEMBERS, &member_key(group_id, agent_id))
            .await?;
        Ok(self.groups_index().remove(group_id, agent_id))
    }

    /// An agent was deleted: its memberships and owned groups go too.
    pub(super) async fn groups_forget_agent(&self, agent_id: &str) -> StoreResult<()> {
        let _writer = self.groups.writer.lock().await;
        let groups = self.groups_index().agent_groups(agent_id, usize::MAX, None);
        for (group, role) in groups {
            if role == GroupRole::Owner {
                self.delete_group_locked(&group.id).await?;
            } else {
                self.client
                    .delete(GROUP_MEMBERS, &member_key(&group.id, agent_id))
                    .await?;
                self.groups_index().remove(&group.id, agent_id);
            }
        }
        Ok(())
    }

    pub(super) async fn groups_post(
        &self,
        mut post: GroupPost,
        fan: FanOut,
    ) -> StoreResult<Posted> {
        let _writer = self.groups.writer.lock().await;
        let recipients = {
            let index = self.groups_index();
            if let Some(existing) = index.precheck_post(&post)? {
                return Ok(Posted::Duplicate(existing));
            }
            index.recipients(&post)
        };
        // Hold every recipient's inbox writer (in id order) so the quota
        // checks stay true until the copies are in.
        let cells: Vec<(String, Arc<InboxCell>)> = recipients
            .into_iter()
            .filter_map(|a| Some((a.clone(), self.cell(&a)?)))
            .collect();
        let mut guards = Vec::with_capacity(cells.len());
        for (_, cell) in &cells {
            guards.push(cell.writer.lock().await);
        }
        let mut planned = Vec::with_capacity(cells.len());
        for (agent_id, cell) in &cells {
            let Some(agent) = self.agents.get(agent_id).map(|a| a.webhook_url.is_some()) else {
                continue;
            };
            let state = cell.state.lock();
            if !state.open {
                continue;
            }
            planned.push(Recipient {
                agent_id: agent_id.clone(),
                push: agent,
                full: state.live >= fan.quota,
            });
        }
        let plan = plan_fan_out(&mut post, &fan, planned);
        for (n, copy) in plan.copies.iter().enumerate() {
            let taken = match self.owners.entry(copy.id.clone()) {
                Entry::Occupied(_) => true,
                Entry::Vacant(slot) => {
                    slot.insert(copy.recipient.clone());
                    false
                }
            };
            if taken {
                self.release_ids(&plan.copies[..n]);
                return Err(StoreError::MessageIdTaken);
            }
        }
        let pkey = post_key(&post.id);
        let pending = json!({"complete": false, "post": post});
        if let Err(e) = self.client.put(GROUP_POSTS, &pkey, &pending, false).await {
            self.release_ids(&plan.copies);
            return Err(e.into());
        }
        let seqs: Vec<u64> = plan.copies.iter().map(|_| self.next_seq()).collect();
        let writes: Vec<(String, String, Value)> = plan
            .copies
            .iter()
            .zip(&seqs)
            .map(|(m, seq)| {
                (
                    MESSAGES.to_string(),
                    m.id.clone(),
                    json!({"seq": seq, "message": m}),
                )
            })
            .chain(
                plan.deliveries
                    .iter()
                    .map(|d| Ok((DELIVERIES.to_string(), d.id.clone(), to_doc(d)?)))
                    .collect::<StoreResult<Vec<_>>>()?,
            )
            .collect();
        let results: Vec<(String, String, Result<(), MechError>)> = stream::iter(writes)
            .map(|(collection, key, doc)| async move {
                let _permit = self.bulk.acquire().await.expect("never closed");
                let result = self.client.put(&collection, &key, &doc, false).await;
                (collection, key, result)
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        let mut failure: Option<StoreError> = results.iter().find_map(|(_, _, r)| {
            r.as_ref()
                .err()
                .map(|e| StoreError::Unavailable(e.to_string()))
        });
        if failure.is_none() {
            let complete = json!({"complete": true, "post": post});
            if let Err(e) = self.client.put(GROUP_POSTS, &pkey, &complete, true).await {
                failure = Some(e.into());
            }
        }
        if let Some(e) = failure {
            self.clean_up_post(&pkey, &pending, &results).await;
            self.release_ids(&plan.copies);
            tracing::warn!(post = %post.id, error = %e, "Mech group fan-out failed and was cleaned up");
            return Err(e);
        }
        for (copy, seq) in plan.copies.into_iter().zip(seqs) {
            if let Some(cell) = self.cell(&copy.recipient) {
                cell.state.lock().insert(seq, copy);
            }
        }
        {
            let mut book = self.deliveries.lock();
            for d in plan.deliveries {
                book.put(d);
            }
        }
        drop(guards);
        self.groups_index().record_post(post.clone());
        Ok(Posted::Created(post))
    }

    /// Undoes a failed fan-out. The post goes back to `pending` first, so
    /// whatever the cleanup cannot delete (a write whose failure was only a
    /// lost answer included) is rolled back at the next start; every planned
    /// document is deleted (absent ones count as deleted), and the post
    /// document last, only once nothing of it is left.
    async fn clean_up_post(
        &self,
        pkey: &str,
        pending: &Value,
        writes: &[(String, String, Result<(), MechError>)],
    ) {
        let repended = self
            .client
            .put(GROUP_POSTS, pkey, pending, true)
            .await
            .is_ok();
        let targets: Vec<(String, String)> = writes
            .iter()
            .map(|(collection, key, _)| (collection.clone(), key.clone()))
            .collect();
        let deleted: Vec<bool> = stream::iter(targets)
            .map(|(collection, key)| async move {
                let _permit = self.bulk.acquire().await.expect("never closed");
                self.client.delete(&collection, &key).await.is_ok()
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        if deleted.iter().all(|ok| *ok) {
            self.compensate(GROUP_POSTS, pkey).await;
        } else if repended {
            tracing::warn!(
                post = pkey,
                "a failed group fan-out left documents in Mech; its post stays pending and is rolled back at the next start"
            );
        } else {
            tracing::error!(
                post = pkey,
                "a failed group fan-out left documents in Mech and its post could not be marked pending; check the post's copies"
            );
        }
    }

    fn release_ids(&self, copies: &[Message]) {
        for copy in copies {
            self.owners.remove(&copy.id);
        }
    }

    pub(super) async fn groups_purge(&self, now: Millis, limit: usize) -> StoreResult<u64> {
        let _writer = self.groups.writer.lock().await;
        let expired = self.groups_index().expired_posts(now, limit);
        let deleted: Vec<(GroupPost, Result<(), MechError>)> = stream::iter(expired)
            .map(|post| async move {
                let _permit = self.bulk.acquire().await.expect("never closed");
                let result = self.client.delete(GROUP_POSTS, &post_key(&post.id)).await;
                (post, result)
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        let mut purged = 0;
        let mut first_error = None;
        let mut index = self.groups_index();
        for (post, result) in deleted {
            match result {
                Ok(()) => {
                    index.remove_post(&post.group_id, post.created_at, &post.id);
                    purged += 1;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if purged == 0 => Err(e.into()),
            _ => Ok(purged),
        }
    }
}
