//! Rate limits (PROTOCOL.md §8): every request draws from one bucket chosen
//! by who is calling.
//!
//! - Probes (`/health`, `/ready`): never limited, so a flood from the
//!   orchestrator's own address cannot fail them (`/ready` pings the store
//!   at most once a second whatever the request rate).
//! - Other open routes (`/metrics`, `/docs`, `/openapi.json`):
//!   the client IP's bucket, enforced by a tower_governor layer before the
//!   handler runs.
//! - Registration: a separate, much smaller per-IP bucket
//!   (`REGISTER_RATE_LIMIT_PER_MIN`), also a tower_governor layer.
//! - Every other `/api` route: decided in the `Authed` extractor *after*
//!   authentication. An agent (signature or session token) draws from its
//!   own bucket; an anonymous request from its IP's bucket (the same one as
//!   the open routes); the operator (master key) is not limited.
//!
//! The per-agent bucket is keyed by the *authenticated* agent on purpose: a
//! key taken from the unverified `keyId` before authentication would let
//! anyone empty a victim's bucket by sending junk in its name.
//!
//! Failed authentications have their own budget per client IP and per
//! claimed agent ([`AuthFailures`]).
//!
//! Limiter state is one small entry per key; [`RateLimits::retain_recent`]
//! (run every minute by the housekeeping task) drops entries whose bucket is
//! full again, so memory stays proportional to recently active clients.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use super::error::ApiError;
use crate::config::Config;
use crate::hub::Caller;

/// The address a request is attributed to: the TCP peer, or behind a trusted
/// proxy (`TRUST_PROXY=true`) the last `X-Forwarded-For` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The client address of a request. The observe middleware computes it
    /// once and caches it in the extensions; later readers get that copy.
    pub fn of(extensions: &Extensions, headers: &HeaderMap, trust_proxy: bool) -> ClientIp {
        if let Some(ip) = extensions.get::<ClientIp>() {
            return *ip;
        }
        if trust_proxy && let Some(ip) = last_forwarded_for(headers) {
            return ClientIp(ip);
        }
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        ClientIp(peer)
    }
}

/// The last `X-Forwarded-For` entry: the address our proxy saw. Earlier
/// entries are whatever the client chose to send and prove nothing.
fn last_forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
}

/// The bucket key of an address: IPv4 as is, IPv6 by its /64 network (one
/// host usually owns a whole /64 and could otherwise rotate through it).
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// tower_governor key extractor: the client IP's bucket.
#[derive(Debug, Clone, Copy)]
pub struct ClientIpKey {
    trust_proxy: bool,
}

impl KeyExtractor for ClientIpKey {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        let ip = ClientIp::of(req.extensions(), req.headers(), self.trust_proxy);
        Ok(bucket_of(ip.0))
    }
}

type IpConfig = GovernorConfig<ClientIpKey, NoOpMiddleware>;
type AgentLimiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;
/// The layer type of the per-IP limits.
pub type IpLimitLayer = GovernorLayer<ClientIpKey, NoOpMiddleware, Body>;

/// The hub's rate limiters, built from the settings once.
pub struct RateLimits {
    ip: Arc<IpConfig>,
    register: Arc<IpConfig>,
    agent: AgentLimiter,
    /// Failed authentications, per client IP and per claimed agent.
    pub failures: AuthFailures,
}

/// Window in which failed authentications are counted.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Claimed-agent windows kept at most: the ids are the attacker's choice,
/// so beyond this, failures count against the client IP only.
const MAX_FAILURE_AGENTS: usize = 100_000;

/// Failed authentications (bad signature, wrong API key, forged or expired
/// token, replayed nonce…) counted per client IP and per claimed agent in
/// fixed one-minute windows, `AUTH_FAILURE_LIMIT_PER_MIN` each.
///
/// - An IP over its budget gets 429 `TOO_MANY_AUTH_FAILURES` for every
///   request carrying credentials until its window ends, *before* any
///   verification, so repeating failures costs the hub nothing.
/// - A claimed agent over its budget makes further *failing* requests
///   naming it 429 instead of 401; requests that verify still pass, so an
///   attacker naming a victim from many addresses cannot lock it out.
pub struct AuthFailures {
    limit: u32,
    ips: DashMap<IpAddr, FailureWindow>,
    agents: DashMap<String, FailureWindow>,
}

#[derive(Clone, Copy)]
struct FailureWindow {
    opened: Instant,
    count: u32,
}

impl FailureWindow {
    /// Seconds until the window ends when its budget is spent.
    fn blocked(&self, limit: u32, now: Instant) -> Option<u64> {
        let elapsed = now.duration_since(self.opened);
        (elapsed < FAILURE_WINDOW && self.count >= limit)
            .then(|| whole_seconds_after((FAILURE_WINDOW - elapsed).as_secs()))
    }
}

fn count_failure<K: std::hash::Hash + Eq>(
    map: &DashMap<K, FailureWindow>,
    key: K,
    limit: u32,
    now: Instant,
) -> Option<u64> {
    let mut window = map.entry(key).or_insert(FailureWindow {
        opened: now,
        count: 0,
    });
    if now.duration_since(window.opened) >= FAILURE_WINDOW {
        *window = FailureWindow {
            opened: now,
            count: 0,
        };
    }
    window.count = window.count.saturating_add(1);
    window.blocked(limit, now)
}

impl AuthFailures {
    fn new(limit: u32) -> Self {
        AuthFailures {
            limit: limit.max(1),
            ips: DashMap::new(),
            agents: DashMap::new(),
        }
    }

    /// `Some(retry_after_sec)` while `ip` has spent its failure budget.
    pub fn ip_blocked(&self, ip: ClientIp) -> Option<u64> {
        let window = *self.ips.get(&bucket_of(ip.0))?;
        window.blocked(self.limit, Instant::now())
    }

    /// Counts one failure of `ip` naming `claimed`; `Some(retry_after_sec)`
    /// when either budget is now spent (the failure is then answered 429).
    pub fn record(&self, ip: ClientIp, claimed: Option<&str>) -> Option<u64> {
        let now = Instant::now();
        let by_ip = count_failure(&self.ips, bucket_of(ip.0), self.limit, now);
        let by_agent = claimed
            .filter(|id| self.agents.contains_key(*id) || self.agents.len() < MAX_FAILURE_AGENTS)
            .and_then(|id| count_failure(&self.agents, id.to_string(), self.limit, now));
        by_ip.max(by_agent)
    }

    /// Forgets windows that ended.
    fn prune(&self) {
        let now = Instant::now();
        self.ips
            .retain(|_, w| now.duration_since(w.opened) < FAILURE_WINDOW);
        self.agents
            .retain(|_, w| now.duration_since(w.opened) < FAILURE_WINDOW);
        self.ips.shrink_to_fit();
        self.agents.shrink_to_fit();
    }
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").finish_non_exhaustive()
    }
}

impl RateLimits {
    /// The limiters of `config`, or `None` when `RATE_LIMIT_ENABLED=false`.
    pub fn from_config(config: &Config) -> Option<Arc<Self>> {
        if !config.rate_limit_enabled {
            return None;
        }
        let key = ClientIpKey {
            trust_proxy: config.trust_proxy,
        };
        let per_request = Duration::from_secs(1) / config.rate_limit_per_sec.max(1);
        let burst = config.rate_limit_burst.max(1);
        let per_registration = Duration::from_secs(60) / config.register_rate_limit_per_min.max(1);
        let register_burst = config.register_rate_limit_per_min.max(1);
        let quota = Quota::with_period(per_request)
            .expect("a positive period")
            .allow_burst(NonZeroU32::new(burst).expect("burst >= 1"));
        Some(Arc::new(RateLimits {
            ip: Arc::new(ip_config(key, per_request, burst)),
            register: Arc::new(ip_config(key, per_registration, register_burst)),
            agent: RateLimiter::keyed(quota),
            failures: AuthFailures::new(config.auth_failure_limit_per_min),
        }))
    }

    /// Layer for the open routes: the client IP's bucket.
    pub fn ip_layer(&self) -> IpLimitLayer {
        GovernorLayer::new(self.ip.clone()).error_handler(rejection)
    }

    /// Layer for registration: the client IP's registration bucket.
    pub fn register_layer(&self) -> IpLimitLayer {
        GovernorLayer::new(self.register.clone()).error_handler(rejection)
    }

    /// Draws one request of an authenticated `caller` from its bucket.
    pub fn check(&self, caller: &Caller, ip: ClientIp) -> Result<(), ApiError> {
        let refused = match caller {
            Caller::Master => return Ok(()),
            Caller::Agent { agent_id, .. } => self.agent.check_key(agent_id).err(),
            Caller::Anonymous => self.ip.limiter().check_key(&bucket_of(ip.0)).err(),
        };
        match refused {
            None => Ok(()),
            Some(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(ApiError::rate_limited(whole_seconds_after(wait.as_secs())))
            }
        }
    }

    /// Forgets keys whose bucket has refilled (they behave as new ones).
    pub fn retain_recent(&self) {
        for limiter in [self.ip.limiter(), self.register.limiter()] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.agent.retain_recent();
        self.agent.shrink_to_fit();
        self.failures.prune();
    }
}

fn ip_config(key: ClientIpKey, period: Duration, burst: u32) -> IpConfig {
    GovernorConfigBuilder::default()
        .period(period)
        .burst_size(burst)
        .key_extractor(key)
        .finish()
        .expect("period and burst are positive")
}

/// `Retry-After` for a wait whose whole seconds are `floor`: the next whole
/// second, so a client that obeys it never comes back too early (and never
/// reads 0, which tower_governor reports for sub-second waits).
fn whole_seconds_after(floor: u64) -> u64 {
    floor + 1
}

/// tower_governor's refusals as our JSON errors.
fn rejection(error: GovernorError) -> axum::response::Response {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            ApiError::rate_limited(whole_seconds_after(wait_time)).into_response()
        }
        other => {
            tracing::error!(error = %other, "rate limiter failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "internal error",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn with_peer(ip: &str) -> Extensions {
        let mut e = Extensions::new();
        e.insert(ConnectInfo(SocketAddr::new(ip.parse().unwrap(), 4000)));
        e
    }

    #[test]
    fn forwarded_for_is_used_only_behind_a_trusted_proxy() {
        let ext = with_peer("10.0.0.1");
        let h = headers(&["6.6.6.6, 203.0.113.9"]);
        assert_eq!(ClientIp::of(&ext, &h, false).0.to_string(), "10.0.0.1");
        assert_eq!(ClientIp::of(&ext, &h, true).0.to_string(), "203.0.113.9");
        let two = headers(&["6.6.6.6", "198.51.100.7:1234"]);
        assert_eq!(ClientIp::of(&ext, &two, true).0.to_string(), "198.51.100.7");
        let junk = headers(&["not-an-ip"]);
        assert_eq!(ClientIp::of(&ext, &junk, true).0.to_string(), "10.0.0.1");
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a = bucket_of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = bucket_of("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(
            bucket_of("::ffff:1.2.3.4".parse().unwrap()).to_string(),
            "1.2.3.4"
        );
    }

    #[test]
    fn agents_have_separate_buckets_and_the_operator_none() {
        let config = Config {
            rate_limit_per_sec: 1,
            rate_limit_burst: 2,
            ..Config::default()
        };
        let limits = RateLimits::from_config(&config).unwrap();
        let ip = ClientIp("127.0.0.1".parse().unwrap());
        let agent = |id: &str| Caller::Agent {
            agent_id: id.into(),
            proof: crate::hub::auth::AgentProof::Signature,
        };
        // Burst 2, one more per second: a flood is refused within a few tries
        // however slowly this runs.
        let refused = (0..1000)
            .find_map(|_| limits.check(&agent("a"), ip).err())
            .expect("the flood is refused");
        assert_eq!(refused.code, "RATE_LIMITED");
        assert!(refused.retry_after_sec.unwrap() >= 1);
        assert!(limits.check(&agent("b"), ip).is_ok());
        for _ in 0..10 {
            assert!(limits.check(&Caller::Master, ip).is_ok());
        }
        assert!(
            RateLimits::from_config(&Config {
                rate_limit_enabled: false,
                ..Config::default()
            })
            .is_none()
        );
    }
}
