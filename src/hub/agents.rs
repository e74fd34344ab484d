//! Agent lifecycle: registration, heartbeat, trust list, webhook, key rotation, deletion.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{Hub, HubError, HubResult, ids};
use crate::signing::keys;
use crate::store::{Agent, AgentChange, AgentKey, DeliveryAttempt, Metadata, Millis, StoreError};

/// A registration request, validated here.
#[derive(Debug, Default, Clone)]
pub struct Registration {
    pub agent_id: Option<String>,
    pub agent_type: Option<String>,
    pub metadata: Option<Metadata>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    /// Base64 Ed25519 public key; the recommended way (the client keeps its secret).
    pub public_key: Option<String>,
}

/// A new agent, plus its secret key when the server generated the pair.
#[derive(Debug, Clone)]
pub struct Registered {
    pub agent: Agent,
    /// tweetnacl-format secret key, returned once.
    pub secret_key: Option<String>,
}

/// Outcome of a key rotation.
#[derive(Debug, Clone)]
pub struct RotatedKey {
    pub agent: Agent,
    pub previous_key_valid_until: Option<i64>,
}

/// Longest accepted `agent_type`.
const MAX_AGENT_TYPE_LEN: usize = 64;
/// Longest accepted webhook URL.
const MAX_WEBHOOK_URL_LEN: usize = 2048;
/// Longest accepted webhook secret.
const MAX_WEBHOOK_SECRET_LEN: usize = 512;
/// Default and largest page of the webhook attempts listing.
const DEFAULT_ATTEMPTS_PAGE: usize = 50;
const MAX_ATTEMPTS_PAGE: usize = 100;

impl Hub {
    /// Registers an agent with a client-held key or a freshly generated pair.
    pub async fn register(&self, reg: Registration) -> HubResult<Registered> {
        let agent_id = match reg.agent_id.filter(|id| !id.is_empty()) {
            None => ids::generate_agent_id(),
            Some(id) => ids::require_agent_id("agent_id", &id)?.to_string(),
        };
        let agent_type = reg.agent_type.unwrap_or_else(|| "generic".into());
        if agent_type.is_empty() || agent_type.len() > MAX_AGENT_TYPE_LEN {
            return Err(HubError::invalid("agent_type", "must be 1-64 characters"));
        }
        let (public_key, secret_key) = match reg.public_key {
            Some(pk) => {
                let key = keys::decode_public_key(&pk).ok_or_else(|| {
                    HubError::invalid("public_key", "must be base64 of a 32-byte Ed25519 key")
                })?;
                (keys::encode_public_key(&key), None)
            }
            None => {
                let pair = keys::generate();
                (
                    keys::encode_public_key(&pair.verifying_key()),
                    Some(keys::encode_secret_key(&pair)),
                )
            }
        };
        let (webhook_url, webhook_secret) = match reg.webhook_url {
            Some(url) => {
                self.validate_webhook_url(&url)?;
                validate_webhook_secret(reg.webhook_secret.as_deref())?;
                let secret = reg.webhook_secret.unwrap_or_else(generate_webhook_secret);
                (Some(url), Some(secret))
            }
            None => (None, None),
        };
        let now = self.now();
        let agent = Agent {
            agent_id: agent_id.clone(),
            agent_type,
            metadata: reg.metadata.unwrap_or_default(),
            keys: vec![AgentKey {
                public_key,
                version: 1,
                valid_until: None,
            }],
            webhook_url,
            webhook_secret,
            previous_webhook_secret: None,
            trusted_agents: Vec::new(),
            last_heartbeat: now,
            online: true,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            heartbeat_timeout_ms: self.config.heartbeat_timeout_ms,
            created_at: now,
            updated_at: now,
        };
        match self.store.create_agent(agent.clone()).await {
            Ok(()) => Ok(Registered { agent, secret_key }),
            Err(StoreError::AgentExists) => Err(HubError::AgentExists(agent_id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Fetches an agent or fails with `AgentNotFound`.
    pub async fn agent(&self, agent_id: &str) -> HubResult<Agent> {
        self.store
            .get_agent(agent_id)
            .await?
            .ok_or_else(|| HubError::AgentNotFound(agent_id.to_string()))
    }

    /// Deletes an agent; its live inbox is dead-lettered in the same step.
    pub async fn delete_agent(&self, agent_id: &str) -> HubResult<()> {
        if !self.store.delete_agent(agent_id, self.now()).await? {
            return Err(HubError::AgentNotFound(agent_id.to_string()));
        }
        self.wakers.remove(agent_id);
        Ok(())
    }

    /// Refreshes the heartbeat, merging `metadata` shallowly.
    pub async fn heartbeat(&self, agent_id: &str, metadata: Option<Metadata>) -> HubResult<Agent> {
        let change = AgentChange::Heartbeat {
            now: self.now(),
            metadata,
        };
        self.change_agent(agent_id, change).await
    }

    /// Adds an agent to the trust list.
    pub async fn trust(&self, agent_id: &str, other: &str) -> HubResult<Agent> {
        let other = ids::require_agent_id("agent_id", ids::normalize(other))?;
        let change = AgentChange::AddTrusted {
            agent_id: other.to_string(),
            now: self.now(),
        };
        self.change_agent(agent_id, change).await
    }

    /// Removes an agent from the trust list.
    pub async fn untrust(&self, agent_id: &str, other: &str) -> HubResult<Agent> {
        let change = AgentChange::RemoveTrusted {
            agent_id: ids::normalize(other).to_string(),
            now: self.now(),
        };
        self.change_agent(agent_id, change).await
    }

    /// Sets the webhook; a secret is generated when none is given.
    pub async fn set_webhook(
        &self,
        agent_id: &str,
        url: String,
        secret: Option<String>,
    ) -> HubResult<Agent> {
        self.validate_webhook_url(&url)?;
        validate_webhook_secret(secret.as_deref())?;
        let now = self.now();
        let change = AgentChange::SetWebhook {
            url: Some(url),
            secret: Some(secret.unwrap_or_else(generate_webhook_secret)),
            overlap_until: self.overlap_until(now),
            now,
        };
        self.change_agent(agent_id, change).await
    }

    /// Removes the webhook and cancels the deliveries still pending for it.
    pub async fn clear_webhook(&self, agent_id: &str) -> HubResult<Agent> {
        let now = self.now();
        let change = AgentChange::SetWebhook {
            url: None,
            secret: None,
            overlap_until: now,
            now,
        };
        let agent = self.change_agent(agent_id, change).await?;
        self.store.cancel_deliveries(agent_id, now).await?;
        Ok(agent)
    }

    /// The agent's most recent webhook attempts, newest first (1..=100, default 50).
    pub async fn webhook_attempts(
        &self,
        agent_id: &str,
        limit: Option<usize>,
    ) -> HubResult<Vec<DeliveryAttempt>> {
        let limit = limit.unwrap_or(DEFAULT_ATTEMPTS_PAGE);
        if !(1..=MAX_ATTEMPTS_PAGE).contains(&limit) {
            return Err(HubError::invalid(
                "limit",
                format!("must be between 1 and {MAX_ATTEMPTS_PAGE}"),
            ));
        }
        Ok(self.store.list_attempts(agent_id, limit).await?)
    }

    /// Makes `public_key` current; the old key verifies during the overlap window.
    pub async fn rotate_key(&self, agent_id: &str, public_key: &str) -> HubResult<RotatedKey> {
        let key = keys::decode_public_key(public_key).ok_or_else(|| {
            HubError::invalid("public_key", "must be base64 of a 32-byte Ed25519 key")
        })?;
        let now = self.now();
        let change = AgentChange::RotateKey {
            public_key: keys::encode_public_key(&key),
            overlap_until: self.overlap_until(now),
            now,
        };
        let agent = self.change_agent(agent_id, change).await?;
        let previous_key_valid_until = agent.keys.iter().filter_map(|k| k.valid_until).max();
        Ok(RotatedKey {
            agent,
            previous_key_valid_until,
        })
    }

    /// End of the window in which a replaced key or webhook secret still
    /// works (`KEY_ROTATION_OVERLAP_SEC` from `now`).
    fn overlap_until(&self, now: Millis) -> Millis {
        now + (self.config.key_rotation_overlap_sec * 1000) as i64
    }

    async fn change_agent(&self, agent_id: &str, change: AgentChange) -> HubResult<Agent> {
        match self.store.update_agent(agent_id, &change).await {
            Err(StoreError::AgentNotFound) => Err(HubError::AgentNotFound(agent_id.to_string())),
            other => Ok(other?),
        }
    }

    /// http(s) only; literal private addresses refused unless allowed. The
    /// delivery worker repeats the address check after DNS resolution.
    fn validate_webhook_url(&self, url: &str) -> HubResult<()> {
        let invalid = |m: &str| HubError::invalid("webhook_url", m);
        if url.len() > MAX_WEBHOOK_URL_LEN {
            return Err(invalid("too long"));
        }
        let parsed = reqwest::Url::parse(url).map_err(|_| invalid("must be an absolute URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("must use http or https"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| invalid("must have a host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !self.config.webhook_allow_private
            && let Ok(ip) = host.parse::<IpAddr>()
            && !is_public_ip(ip)
        {
            return Err(invalid(
                "private, loopback and link-local targets are refused (WEBHOOK_ALLOW_PRIVATE)",
            ));
        }
        Ok(())
    }
}

/// 1-512 characters; a `whsec_` secret must carry base64 after the prefix,
/// since receivers decode it to get the Standard Webhooks key.
fn validate_webhook_secret(secret: Option<&str>) -> HubResult<()> {
    let Some(secret) = secret else {
        return Ok(());
    };
    if secret.is_empty() || secret.len() > MAX_WEBHOOK_SECRET_LEN {
        return Err(HubError::invalid(
            "webhook_secret",
            "must be 1-512 characters",
        ));
    }
    if let Some(rest) = secret.strip_prefix("whsec_")
        && BASE64.decode(rest).is_err()
    {
        return Err(HubError::invalid(
            "webhook_secret",
            "a whsec_ secret must be followed by standard base64",
        ));
    }
    Ok(())
}

/// `whsec_` + base64 of 32 random bytes (Standard Webhooks secret format).
pub fn generate_webhook_secret() -> String {
    format!("whsec_{}", BASE64.encode(rand::random::<[u8; 32]>()))
}

/// False for loopback, private, link-local, CGNAT, unspecified and similar addresses.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_ip(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ip_classification() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public_ip(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public_ip(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn webhook_secret_rules() {
        assert!(validate_webhook_secret(None).is_ok());
        assert!(validate_webhook_secret(Some("plain secret")).is_ok());
        assert!(validate_webhook_secret(Some("whsec_AAEC")).is_ok());
        assert!(validate_webhook_secret(Some("")).is_err());
        assert!(validate_webhook_secret(Some("whsec_not base64!")).is_err());
        assert!(validate_webhook_secret(Some(&"x".repeat(513))).is_err());
    }

    #[test]
    fn webhook_secret_format() {
        let s = generate_webhook_secret();
        let raw = BASE64.decode(s.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(raw.len(), 32);
    }
}
