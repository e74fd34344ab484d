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
        let metadata = reg.metadata.unwrap_or_default();
        if crate::store::metadata_size(&metadata) > self.config.max_metadata_bytes() {
            return Err(self.metadata_too_large());
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
            metadata,
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
        if self.store.is_agent_id_retired(&agent_id).await? {
            return Err(HubError::AgentIdRetired(agent_id));
        }
        match self.store.create_agent(agent.clone()).await {
            Ok(()) => {}
            Err(StoreError::AgentExists) => return Err(HubError::AgentExists(agent_id)),
            Err(e) => return Err(e.into()),
        }
        // A deletion that retired the id between the check above and the
        // create: undo the create. A deletion retires the id before it
        // deletes, so once the create succeeded this second look cannot miss it.
        if self.store.is_agent_id_retired(&agent_id).await? {
            self.store.delete_agent(&agent_id, now).await?;
            return Err(HubError::AgentIdRetired(agent_id));
        }
        Ok(Registered { agent, secret_key })
    }

    /// Fetches an agent or fails with `AgentNotFound`.
    pub async fn agent(&self, agent_id: &str) -> HubResult<Agent> {
        self.store
            .get_agent(agent_id)
            .await?
            .ok_or_else(|| HubError::AgentNotFound(agent_id.to_string()))
    }

    /// Deletes an agent; its live inbox is dead-lettered in the same step.
    /// The id is retired first (a tombstone), so nobody can ever register it
    /// again and reach what the agent left behind (SECURITY.md).
    pub async fn delete_agent(&self, agent_id: &str) -> HubResult<()> {
        if self.store.get_agent(agent_id).await?.is_none() {
            return Err(HubError::AgentNotFound(agent_id.to_string()));
        }
        self.store.retire_agent_id(agent_id, self.now()).await?;
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
            max_metadata_bytes: self.config.max_metadata_bytes(),
        };
        match self.change_agent(agent_id, change).await {
            Err(HubError::InvalidInput { field, .. }) if field == "metadata" => {
                Err(self.metadata_too_large())
            }
            other => other,
        }
    }

    fn metadata_too_large(&self) -> HubError {
        HubError::MetadataTooLarge {
            limit_kb: self.config.max_metadata_kb,
        }
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

/// IPv4 special-purpose blocks of the IANA registry (RFC 6890 and later),
/// plus multicast and the reserved 240/4: (network, prefix length).
const REFUSED_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (CGNAT)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local (cloud metadata)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation TEST-NET-1
    ([192, 31, 196, 0], 24), // AS112-v4
    ([192, 52, 193, 0], 24), // AMT
    ([192, 88, 99, 0], 24),  // deprecated 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([192, 175, 48, 0], 24), // direct delegation AS112
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation TEST-NET-2
    ([203, 0, 113, 0], 24),  // documentation TEST-NET-3
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and 255.255.255.255 broadcast
];

/// IPv6 special-purpose blocks of the IANA registry that are refused
/// outright, whatever follows the prefix.
const REFUSED_V6: &[(u128, u8)] = &[
    (0, 96),                           // ::/96: unspecified, loopback, IPv4-compatible
    (0x0064_ff9b_0001 << 80, 48),      // 64:ff9b:1::/48 local-use NAT64
    (0x0100 << 112, 64),               // 100::/64 discard-only
    (0x0100_0000_0000_0001 << 64, 64), // 100:0:0:1::/64 dummy prefix
    (0x2001 << 112, 23), // 2001::/23 IETF protocol assignments (Teredo, ORCHID, benchmarking…)
    (0x2001_0db8 << 96, 32), // 2001:db8::/32 documentation
    (0x2002 << 112, 16), // 2002::/16 6to4 (embeds an IPv4 address)
    (0x2620_004f_8000 << 80, 48), // 2620:4f:8000::/48 AS112-v6
    (0x3fff << 112, 20), // 3fff::/20 documentation
    (0x5f00 << 112, 16), // 5f00::/16 SRv6 SIDs
    (0xfc00 << 112, 7),  // fc00::/7 unique local
    (0xfe80 << 112, 10), // fe80::/10 link-local
    (0xfec0 << 112, 10), // fec0::/10 site-local (deprecated)
    (0xff00 << 112, 8),  // ff00::/8 multicast
];

/// IPv6 prefixes whose last 32 bits are an IPv4 address the packet reaches:
/// allowed only when that address is (IPv4-mapped, SIIT-translated, NAT64
/// well-known prefix).
const EMBEDS_V4: &[(u128, u8)] = &[
    (0xffff << 32, 96),      // ::ffff:0:0/96 IPv4-mapped
    (0xffff_0000 << 32, 96), // ::ffff:0:0:0/96 IPv4-translated (SIIT)
    (0x0064_ff9b << 96, 96), // 64:ff9b::/96 NAT64 well-known prefix
];

fn in_prefix(addr: u128, (network, len): (u128, u8)) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    addr & mask == network & mask
}

/// False for every address a webhook must not reach: the IANA IPv4 and IPv6
/// special-purpose ranges (loopback, private, link-local, CGNAT,
/// documentation, benchmarking, reserved, multicast, NAT64, 6to4, Teredo,
/// site-local…) and IPv6 forms embedding an IPv4 address that is itself refused
/// (IPv4-mapped, translated, NAT64, ISATAP). See SECURITY.md.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let addr = u32::from(v4);
            !REFUSED_V4.iter().any(|&(net, len)| {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                addr & mask == u32::from_be_bytes(net) & mask
            })
        }
        IpAddr::V6(v6) => {
            let addr = u128::from(v6);
            let embedded = || IpAddr::V4(std::net::Ipv4Addr::from(addr as u32));
            if EMBEDS_V4.iter().any(|&p| in_prefix(addr, p)) {
                return is_public_ip(embedded());
            }
            if REFUSED_V6.iter().any(|&p| in_prefix(addr, p)) {
                return false;
            }
            // ISATAP interface identifiers (::0:5efe:a.b.c.d, ::200:5efe:a.b.c.d)
            // carry an IPv4 address a tunnel delivers to.
            let interface_id = (addr >> 32) as u32;
            if interface_id & 0xfdff_ffff == 0x0000_5efe {
                return is_public_ip(embedded());
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ip_classification() {
        let refused = [
            // IPv4 special-purpose registry, first and last address of each block.
            "0.0.0.0",
            "0.255.255.255",
            "10.0.0.0",
            "10.255.255.255",
            "100.64.0.0",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.1",
            "192.0.0.9",
            "192.0.2.1",
            "192.31.196.1",
            "192.52.193.1",
            "192.88.99.1",
            "192.168.1.1",
            "192.175.48.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6 special-purpose registry.
            "::",
            "::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b:1::1",
            "100::1",
            "100:0:0:1::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "2001:1ff:ffff::1",
            "2001:db8::1",
            "2002:7f00:1::",
            "2002:808:808::1",
            "2620:4f:8000::1",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "feff::1",
            "ff02::1",
            // IPv6 forms that embed a refused IPv4 address.
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:0:169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b::c0a8:101",
            "2606:4700::5efe:7f00:1",
            "2606:4700::200:5efe:a00:1",
        ];
        for addr in refused {
            assert!(
                !is_public_ip(addr.parse().unwrap()),
                "{addr} must be refused"
            );
        }
        let allowed = [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "2001:200::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2606:4700::5efe:808:808",
        ];
        for addr in allowed {
            assert!(
                is_public_ip(addr.parse().unwrap()),
                "{addr} must be allowed"
            );
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
