//! Streaming delivery (issue 14): an inbox stream is a view of the durable
//! inbox. It leases messages for its consumer as they become available and
//! never holds more than `max_in_flight` unsettled; the consumer settles
//! them over the ordinary ack/nack routes, on any instance.
//!
//! Each stream has a random id, and every lease it takes carries that id as
//! its lease-holder tag (see `Store::lease_held`). That is what lets any
//! instance (a) count the stream's unsettled deliveries from the store,
//! (b) release them the moment the stream is noticed closed, and (c) hand
//! them, under fresh leases, to a reconnecting client that names the
//! earlier stream in `Last-Event-ID` — even when that stream ran on another
//! instance or was never noticed as dropped. Event ids are
//! `<stream_id>:<seq>`; `seq` 0 is the `open` event, sent first so a client
//! always holds an id of the stream now serving it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Notify;

use super::{Caller, Hub, HubError, HubResult};
use crate::audit::AuditKind;
use crate::hub::auth::AgentProof;
use crate::hub::inbox::{DEFAULT_VISIBILITY_SEC, MAX_VISIBILITY_SEC};
use crate::store::{HOLDER_SEPARATOR, LeaseRequest, Message, Millis};

/// Unsettled leases a stream holds when the client names no limit.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 10;
/// Largest `max_in_flight`.
pub const MAX_IN_FLIGHT: u64 = 100;
/// Length of a stream id (lowercase hex).
pub const STREAM_ID_LEN: usize = 32;
/// Pause before a stream looks again after the store was unavailable.
const STORAGE_RETRY: Duration = Duration::from_secs(1);
/// Longest `Last-Event-ID` accepted: a stream id, `:` and a `u64`.
pub const MAX_EVENT_ID_LEN: usize = STREAM_ID_LEN + 1 + 20;

/// Stream parameters as sent by the client (validated here).
#[derive(Debug, Default, Clone)]
pub struct StreamInput {
    pub max_in_flight: Option<u64>,
    pub visibility_timeout: Option<u64>,
    /// The `Last-Event-ID` header of a reconnect.
    pub last_event_id: Option<String>,
}

/// What a stream yields next.
#[derive(Debug)]
pub enum StreamEvent {
    /// The first event: the id of this stream (event id `<stream_id>:0`).
    Open { id: String, stream_id: String },
    /// One leased message.
    Message { id: String, message: Box<Message> },
    /// Nothing happened for `STREAM_HEARTBEAT_SEC`.
    Heartbeat,
    /// The hub shuts down; this stream's unsettled leases were released.
    Shutdown,
    /// The stream ends for good (`reason` is a stable code): the agent was
    /// deleted, its session revoked, or the store failed (not merely
    /// unavailable: the stream waits that out).
    End { reason: &'static str },
}

/// How many streams are open on this instance, per agent and in total.
#[derive(Default)]
pub struct StreamRegistry {
    open: Mutex<(HashMap<String, u32>, u32)>,
}

impl StreamRegistry {
    /// Counts a new stream of `agent_id` unless a limit is reached.
    fn admit(&self, agent_id: &str, per_agent: u32, total: u32) -> HubResult<()> {
        let mut open = self.open.lock();
        let (agents, all) = &mut *open;
        if *all >= total {
            return Err(HubError::TooManyStreams(format!(
                "this hub holds its maximum of {total} streams"
            )));
        }
        let count = agents.entry(agent_id.to_string()).or_default();
        if *count >= per_agent {
            return Err(HubError::TooManyStreams(format!(
                "agent {agent_id} holds its maximum of {per_agent} streams"
            )));
        }
        *count += 1;
        *all += 1;
        Ok(())
    }

    /// Forgets one stream of `agent_id`.
    fn leave(&self, agent_id: &str) {
        let mut open = self.open.lock();
        let (agents, all) = &mut *open;
        if let Some(count) = agents.get_mut(agent_id) {
            *count -= 1;
            if *count == 0 {
                agents.remove(agent_id);
            }
        }
        *all = all.saturating_sub(1);
    }

    /// Streams open on this instance.
    pub fn total(&self) -> u32 {
        self.open.lock().1
    }
}

/// What the caller was when the stream opened; the stream ends when it no
/// longer holds (the agent deleted or re-registered, or, for a session, its
/// keys rotated: what revokes a session token).
struct Standing {
    created_at: Millis,
    key_version: Option<u32>,
}

/// One open stream of an inbox. Dropping it (the client went away) releases
/// its unsettled leases in the background.
pub struct InboxStream {
    hub: Arc<Hub>,
    agent_id: String,
    stream_id: String,
    seq: u64,
    max_in_flight: usize,
    visibility_ms: i64,
    /// The earlier stream to take over, before anything new.
    resume_from: Option<String>,
    /// Leased, not yet handed to the client.
    pending: VecDeque<Message>,
    /// An upper bound on this stream's unsettled leases: the last count from
    /// the store plus what was leased since (settling only lowers it).
    in_flight: usize,
    standing: Standing,
    notify: Arc<Notify>,
    next_heartbeat: tokio::time::Instant,
    opened: bool,
    /// Set once the stream released its leases itself (shutdown, end).
    finished: bool,
}

impl Hub {
    /// Opens a stream of `agent_id`'s inbox for `caller` (already scoped).
    pub async fn open_stream(
        self: &Arc<Self>,
        caller: &Caller,
        agent_id: &str,
        input: StreamInput,
    ) -> HubResult<InboxStream> {
        let max_in_flight = input.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if !(1..=MAX_IN_FLIGHT).contains(&max_in_flight) {
            return Err(HubError::invalid(
                "max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT}"),
            ));
        }
        let visibility = input.visibility_timeout.unwrap_or(DEFAULT_VISIBILITY_SEC);
        if !(1..=MAX_VISIBILITY_SEC).contains(&visibility) {
            return Err(HubError::invalid(
                "visibility_timeout",
                format!("must be between 1 and {MAX_VISIBILITY_SEC} seconds"),
            ));
        }
        let resume_from = input
            .last_event_id
            .as_deref()
            .map(parse_event_id)
            .transpose()?;
        let agent = self
            .store
            .get_agent(agent_id)
            .await?
            .ok_or_else(|| HubError::AgentNotFound(agent_id.to_string()))?;
        let session = matches!(
            caller,
            Caller::Agent {
                proof: AgentProof::Session,
                ..
            }
        );
        let standing = Standing {
            created_at: agent.created_at,
            key_version: session.then(|| agent.key_version()),
        };
        self.streams.admit(
            agent_id,
            self.config.stream_max_per_agent,
            self.config.stream_max_total,
        )?;
        Ok(InboxStream {
            hub: self.clone(),
            agent_id: agent_id.to_string(),
            stream_id: uuid::Uuid::new_v4().simple().to_string(),
            seq: 0,
            max_in_flight: max_in_flight as usize,
            visibility_ms: (visibility * 1000) as i64,
            resume_from,
            pending: VecDeque::new(),
            in_flight: 0,
            standing,
            notify: self.wakers.get(agent_id),
            next_heartbeat: tokio::time::Instant::now() + self.stream_heartbeat(),
            opened: false,
            finished: false,
        })
    }

    fn stream_heartbeat(&self) -> Duration {
        Duration::from_secs(self.config.stream_heartbeat_sec)
    }

    /// Ends every lease stream `stream_id` holds in `agent_id`'s inbox and
    /// wakes the inbox, so another consumer gets the messages at once.
    async fn release_stream(&self, agent_id: &str, stream_id: &str) -> HubResult<()> {
        let counts = self
            .store
            .release_held(
                agent_id,
                stream_id,
                self.now(),
                self.config.max_delivery_attempts,
            )
            .await?;
        if counts.requeued > 0 {
            self.wakers.wake(agent_id);
        }
        if counts.dead > 0 {
            let detail =
                json!({ "source": "stream", "stream_id": stream_id, "count": counts.dead });
            self.audit(AuditKind::DeadLettered, Some(agent_id), detail)
                .await;
        }
        Ok(())
    }

    /// After an ack or nack that may settle a stream's delivery (its lease
    /// id carries a holder tag): wakes the inbox's streams here and on every
    /// other instance, since a slot is free.
    pub(super) async fn settled(&self, agent_id: &str, lease_ids: &[Option<String>]) {
        // An ack without a lease id may have settled a stream's delivery
        // too: only a lease id without a holder tag proves it did not.
        let maybe_held = lease_ids
            .iter()
            .any(|l| l.as_ref().is_none_or(|l| l.contains(HOLDER_SEPARATOR)));
        if !maybe_held {
            return;
        }
        self.wakers.wake(agent_id);
        if let Err(e) = self.store.announce(agent_id).await {
            tracing::warn!(error = %e, "could not announce a settled stream delivery to other instances");
        }
    }
}

/// Parses `<stream_id>:<seq>` (attacker input: bounded, strict format) into the stream id.
fn parse_event_id(id: &str) -> HubResult<String> {
    let invalid = || {
        HubError::invalid(
            "Last-Event-ID",
            format!(
                "must be an event id of this hub's streams (<{STREAM_ID_LEN} hex digits>:<number>)"
            ),
        )
    };
    if id.len() > MAX_EVENT_ID_LEN {
        return Err(invalid());
    }
    let (stream, seq) = id.split_once(':').ok_or_else(invalid)?;
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if stream.len() != STREAM_ID_LEN || !stream.chars().all(hex) || seq.parse::<u64>().is_err() {
        return Err(invalid());
    }
    Ok(stream.to_string())
}

impl InboxStream {
    /// This stream's id (its lease-holder tag).
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    fn event_id(&mut self) -> String {
        let id = format!("{}:{}", self.stream_id, self.seq);
        self.seq += 1;
        id
    }

    /// The next event. After `Shutdown` or `End` the stream is over.
    pub async fn next(&mut self) -> StreamEvent {
        if !self.opened {
            self.opened = true;
            return StreamEvent::Open {
                id: self.event_id(),
                stream_id: self.stream_id.clone(),
            };
        }
        loop {
            match self.advance().await {
                Ok(event) => return event,
                // A busy or briefly unreachable store (pool exhausted, failover):
                // keep the stream and its leases, look again shortly.
                Err(HubError::StorageUnavailable(e)) => {
                    tracing::warn!(error = %e, agent_id = %self.agent_id,
                        "inbox stream: storage unavailable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(STORAGE_RETRY) => {}
                        _ = self.hub.shutdown.cancelled() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, agent_id = %self.agent_id, "inbox stream failed");
                    self.finish().await;
                    return StreamEvent::End {
                        reason: "INTERNAL_ERROR",
                    };
                }
            }
        }
    }

    async fn advance(&mut self) -> HubResult<StreamEvent> {
        let hub = self.hub.clone();
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Ok(StreamEvent::Message {
                    id: self.event_id(),
                    message: Box::new(message),
                });
            }
            if hub.shutdown.is_cancelled() {
                self.finish().await;
                return Ok(StreamEvent::Shutdown);
            }
            // Register interest before looking, so a send or an ack in
            // between still wakes us.
            let notify = self.notify.clone();
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = hub.now();
            if let Some(from) = self.resume_from.take() {
                // What the earlier stream left unsettled comes first, under
                // fresh leases; what does not fit is released.
                let taken = hub
                    .store
                    .lease_held(
                        &self.request(self.max_in_flight, now),
                        &self.stream_id,
                        Some(&from),
                    )
                    .await?;
                hub.release_stream(&self.agent_id, &from).await?;
                self.in_flight = taken.len();
                self.pending.extend(taken);
                continue;
            }
            if self.in_flight >= self.max_in_flight {
                self.in_flight = hub
                    .store
                    .count_held(&self.agent_id, &self.stream_id, now)
                    .await? as usize;
            }
            if self.in_flight < self.max_in_flight {
                let free = self.max_in_flight - self.in_flight;
                let leased = hub
                    .store
                    .lease_held(&self.request(free, now), &self.stream_id, None)
                    .await?;
                if !leased.is_empty() {
                    self.in_flight += leased.len();
                    self.pending.extend(leased);
                    continue;
                }
            }
            // A delayed nack or an expiring lease (ours included) makes a
            // message leasable without any send: look again at that moment.
            let mut wake_at = self.next_heartbeat;
            if let Some(at) = hub.store.next_available_at(&self.agent_id).await?
                && at > now
            {
                let after = Duration::from_millis((at - now) as u64);
                wake_at = wake_at.min(tokio::time::Instant::now() + after);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = hub.shutdown.cancelled() => continue,
            }
            // Deleting an agent removes its notifier: check at once (and do
            // not create a new one for an agent that may be gone).
            let replaced = hub
                .wakers
                .peek(&self.agent_id)
                .is_none_or(|current| !Arc::ptr_eq(&current, &self.notify));
            let beat = tokio::time::Instant::now() >= self.next_heartbeat;
            if (replaced || beat)
                && let Some(reason) = self.fallen().await?
            {
                self.finish().await;
                return Ok(StreamEvent::End { reason });
            }
            if replaced {
                self.notify = hub.wakers.get(&self.agent_id);
            }
            if beat {
                self.next_heartbeat = tokio::time::Instant::now() + hub.stream_heartbeat();
                // Settled on an instance that could not tell us: recount.
                self.in_flight = self.max_in_flight;
                return Ok(StreamEvent::Heartbeat);
            }
        }
    }

    fn request(&self, max_messages: usize, now: Millis) -> LeaseRequest {
        LeaseRequest {
            recipient: self.agent_id.clone(),
            now,
            visibility_ms: self.visibility_ms,
            max_messages,
            max_attempts: self.hub.config.max_delivery_attempts,
        }
    }

    /// Why the stream must end (its agent or session is gone), if it must.
    async fn fallen(&self) -> HubResult<Option<&'static str>> {
        let agent = self.hub.store.get_agent(&self.agent_id).await?;
        Ok(match agent {
            Some(a) if a.created_at == self.standing.created_at => {
                match self.standing.key_version {
                    Some(kv) if kv != a.key_version() => Some("TOKEN_EXPIRED"),
                    _ => None,
                }
            }
            _ => Some("AGENT_NOT_FOUND"),
        })
    }

    /// Releases this stream's unsettled leases now (shutdown, end).
    async fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.pending.clear();
        if let Err(e) = self
            .hub
            .release_stream(&self.agent_id, &self.stream_id)
            .await
        {
            tracing::warn!(error = %e, agent_id = %self.agent_id,
                "could not release a stream's leases; they end at their lease end");
        }
    }
}

impl Drop for InboxStream {
    /// The client went away (or the stream ended): its unsettled leases go
    /// back to the inbox at once, not at their lease end.
    fn drop(&mut self) {
        self.hub.streams.leave(&self.agent_id);
        if self.finished {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hub = self.hub.clone();
        let agent_id = std::mem::take(&mut self.agent_id);
        let stream_id = std::mem::take(&mut self.stream_id);
        runtime.spawn(async move {
            if let Err(e) = hub.release_stream(&agent_id, &stream_id).await {
                tracing::warn!(error = %e, agent_id,
                    "could not release a closed stream's leases; they end at their lease end");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_checked_strictly() {
        let sid = "0123456789abcdef0123456789abcdef";
        assert_eq!(parse_event_id(&format!("{sid}:7")).unwrap(), sid);
        for bad in [
            String::new(),
            sid.to_string(),
            format!("{sid}:"),
            format!("{sid}:x"),
            format!("{}:1", sid.to_uppercase()),
            format!("{sid}0:1"),
            format!("{sid}:1{}", "0".repeat(40)),
            format!("{}:1", &sid[1..]),
            "%~:1".into(),
        ] {
            assert!(parse_event_id(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_registry_holds_both_limits() {
        let r = StreamRegistry::default();
        r.admit("a", 2, 3).unwrap();
        r.admit("a", 2, 3).unwrap();
        assert!(matches!(
            r.admit("a", 2, 3),
            Err(HubError::TooManyStreams(_))
        ));
        r.admit("b", 2, 3).unwrap();
        assert!(matches!(
            r.admit("c", 2, 3),
            Err(HubError::TooManyStreams(_))
        ));
        r.leave("a");
        r.admit("c", 2, 3).unwrap();
        assert_eq!(r.total(), 3);
    }
}
