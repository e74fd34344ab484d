//! Who is calling: HTTP signatures, session tokens and the master key
//! (PROTOCOL.md §2), and what each caller may do.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::VerifyingKey;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Hub, HubError, HubResult, ids};
use crate::config::{AgentAuth, MAX_CLOCK_SKEW};
use crate::signing::http::{self as httpsig, HttpSignatureError, RequestParts};
use crate::signing::keys;
use crate::store::Agent;

/// Prefix that marks a bearer value as a session token rather than an API key.
pub const SESSION_TOKEN_PREFIX: &str = "admpst_";

/// The credentials a request carried, as plain values.
pub struct Credentials<'a> {
    /// `Signature` header.
    pub signature: Option<&'a str>,
    /// `Authorization: Bearer` value.
    pub bearer: Option<&'a str>,
    /// `X-API-Key` header.
    pub api_key: Option<&'a str>,
    /// Method, path and headers, for the HTTP signature.
    pub request: RequestParts<'a>,
    /// Raw body, for signed digests.
    pub body: &'a [u8],
}

/// How an agent proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentProof {
    Signature,
    Session,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An agent, by signature or session token.
    Agent { agent_id: String, proof: AgentProof },
    /// The operator (master API key).
    Master,
    /// No credentials.
    Anonymous,
}

impl Caller {
    /// The agent id when the caller is an agent.
    pub fn agent_id(&self) -> Option<&str> {
        match self {
            Caller::Agent { agent_id, .. } => Some(agent_id),
            _ => None,
        }
    }
}

/// A verified caller, plus the signed nonce the request will use up once
/// it is admitted (see [`Hub::consume_nonce`]).
#[derive(Debug)]
pub struct Authenticated {
    pub caller: Caller,
    /// The caller's agent record as read to verify it (signature or
    /// session), so the rest of the request does not read it again.
    pub agent: Option<Agent>,
    /// Digest of (agent, `x-request-nonce`) when the signature covered one.
    nonce_key: Option<String>,
}

impl Hub {
    /// Identifies the caller. Credentials that are present must be valid:
    /// a bad signature is an error, never a fall-through to anonymous.
    /// A signed nonce is checked for size here but remembered only by
    /// [`Hub::consume_nonce`], once the request got past the rate limits.
    pub async fn authenticate(&self, creds: &Credentials<'_>) -> HubResult<Authenticated> {
        if let Some(header) = creds.signature {
            return self.authenticate_signature(header, creds).await;
        }
        let (caller, agent) = if let Some(token) = creds
            .bearer
            .and_then(|b| b.strip_prefix(SESSION_TOKEN_PREFIX))
        {
            let (caller, agent) = self.authenticate_session(token).await?;
            (caller, Some(agent))
        } else if let Some(key) = creds.api_key.or(creds.bearer) {
            if !self.is_master_key(key) {
                return Err(HubError::InvalidApiKey);
            }
            (Caller::Master, None)
        } else {
            (Caller::Anonymous, None)
        };
        Ok(Authenticated {
            caller,
            agent,
            nonce_key: None,
        })
    }

    /// Uses up the request's signed nonce: a second use inside
    /// [`REPLAY_WINDOW`] is `REPLAYED_REQUEST`, on this instance or any other
    /// sharing the store, before or after a restart. Called only for a
    /// request that will be carried out, so a request refused earlier (429)
    /// can be retried with the same nonce.
    pub async fn consume_nonce(&self, auth: &Authenticated) -> HubResult<()> {
        let Some(key) = &auth.nonce_key else {
            return Ok(());
        };
        let now = self.now();
        let until = now + REPLAY_WINDOW.as_millis() as i64;
        if self.store.remember_nonce(key, until, now).await? {
            Ok(())
        } else {
            Err(HubError::ReplayedRequest)
        }
    }

    /// The agent a request claims to come from, without verifying the claim:
    /// the `Signature` keyId, or the subject of a session token this hub
    /// sealed (expired or not). For audit records of refused requests only;
    /// never a basis for a decision.
    pub fn claimed_agent(&self, signature: Option<&str>, bearer: Option<&str>) -> Option<String> {
        if let Some(header) = signature {
            let params = httpsig::parse_signature_header(header).ok()?;
            return Some(ids::normalize(&params.key_id).to_string());
        }
        let token = bearer?.strip_prefix(SESSION_TOKEN_PREFIX)?;
        self.sessions.open(token).ok().map(|claims| claims.sub)
    }

    /// Agent-scoped routes: the agent itself, or the operator.
    pub fn authorize_agent(&self, caller: &Caller, agent_id: &str) -> HubResult<()> {
        match caller {
            Caller::Master => Ok(()),
            Caller::Agent { agent_id: who, .. } if who == agent_id => Ok(()),
            Caller::Agent { agent_id: who, .. } => Err(HubError::Forbidden(format!(
                "authenticated as {who}, not {agent_id}"
            ))),
            Caller::Anonymous if self.config.agent_auth == AgentAuth::Legacy => Ok(()),
            Caller::Anonymous => Err(HubError::AuthRequired),
        }
    }

    /// The `API_KEY_REQUIRED` gate in front of every `/api` route but registration.
    pub fn authorize_gate(&self, caller: &Caller) -> HubResult<()> {
        if self.config.api_key_required && *caller == Caller::Anonymous {
            return Err(HubError::ApiKeyRequired);
        }
        Ok(())
    }

    /// Operator-only routes.
    pub fn authorize_master(&self, caller: &Caller) -> HubResult<()> {
        match caller {
            Caller::Master => Ok(()),
            Caller::Anonymous => Err(HubError::AuthRequired),
            Caller::Agent { .. } => Err(HubError::Forbidden("operator key required".into())),
        }
    }

    /// `MASTER_API_KEY`, or `MASTER_API_KEY_PREVIOUS` during a rotation
    /// overlap (compared in constant time).
    pub fn is_master_key(&self, given: &str) -> bool {
        let Some(master) = &self.config.master_api_key else {
            return false;
        };
        master_key_matches(
            given,
            master,
            self.config.master_api_key_previous.as_deref(),
        )
    }

    async fn authenticate_signature(
        &self,
        header: &str,
        creds: &Credentials<'_>,
    ) -> HubResult<Authenticated> {
        let params = httpsig::parse_signature_header(header).map_err(signature_error)?;
        let agent_id = ids::normalize(&params.key_id).to_string();
        httpsig::check_date(&creds.request, self.clock.now_system(), MAX_CLOCK_SKEW)
            .map_err(signature_error)?;
        let agent = self
            .store
            .get_agent(&agent_id)
            .await?
            .ok_or_else(|| HubError::SignatureInvalid(format!("unknown keyId {agent_id}")))?;
        let keys = self.verifying_keys(&agent);
        httpsig::verify_signature(&params, &creds.request, &keys).map_err(signature_error)?;
        httpsig::verify_digests(&params.headers, &creds.request, creds.body)
            .map_err(signature_error)?;
        let nonce_key = if params.headers.iter().any(|h| h == NONCE_HEADER) {
            let nonce = header_value(&creds.request, NONCE_HEADER).unwrap_or_default();
            Some(nonce_key(&agent_id, nonce)?)
        } else {
            None
        };
        Ok(Authenticated {
            caller: Caller::Agent {
                agent_id,
                proof: AgentProof::Signature,
            },
            agent: Some(agent),
            nonce_key,
        })
    }

    /// Keys of `agent` that verify now.
    pub(crate) fn verifying_keys(&self, agent: &Agent) -> Vec<VerifyingKey> {
        agent
            .active_keys(self.now())
            .filter_map(|k| keys::decode_public_key(&k.public_key))
            .collect()
    }

    async fn authenticate_session(&self, token: &str) -> HubResult<(Caller, Agent)> {
        let claims = self.sessions.open(token)?;
        if claims.exp <= self.now() {
            return Err(HubError::TokenExpired);
        }
        let agent = self
            .store
            .get_agent(&claims.sub)
            .await?
            .filter(|a| a.created_at == claims.ca && a.key_version() == claims.kv)
            .ok_or(HubError::TokenExpired)?;
        let caller = Caller::Agent {
            agent_id: claims.sub,
            proof: AgentProof::Session,
        };
        Ok((caller, agent))
    }

    /// Issues a session token to an agent that proved itself with a signature.
    pub async fn create_session(
        &self,
        caller: &Caller,
        agent_id: &str,
    ) -> HubResult<(String, i64)> {
        match caller {
            Caller::Agent {
                agent_id: who,
                proof: AgentProof::Signature,
            } if who == agent_id => {}
            Caller::Anonymous => return Err(HubError::AuthRequired),
            _ => {
                return Err(HubError::Forbidden(
                    "a session is opened with the agent's own HTTP signature".into(),
                ));
            }
        }
        let agent = self
            .store
            .get_agent(agent_id)
            .await?
            .ok_or_else(|| HubError::AgentNotFound(agent_id.to_string()))?;
        let exp = self.now() + (self.config.session_ttl_sec * 1000) as i64;
        let claims = SessionClaims {
            sub: agent.agent_id.clone(),
            kv: agent.key_version(),
            ca: agent.created_at,
            exp,
        };
        Ok((self.sessions.seal(&claims), exp))
    }
}

/// Whether `given` is the operator key `current` or, during a rotation
/// overlap, `previous`. Both sides are hashed so the comparison takes the
/// same time whatever the lengths, and both comparisons always run (`|` and
/// `&` on [`subtle::Choice`] do not short-circuit), so timing does not tell
/// which key matched.
fn master_key_matches(given: &str, current: &str, previous: Option<&str>) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let current = Sha256::digest(current.as_bytes());
    let previous_set = subtle::Choice::from(u8::from(previous.is_some()));
    let previous = Sha256::digest(previous.unwrap_or_default().as_bytes());
    (given.ct_eq(&current) | (given.ct_eq(&previous) & previous_set)).into()
}

/// Signed header carrying a per-request nonce for replay protection.
pub const NONCE_HEADER: &str = "x-request-nonce";

fn header_value<'a>(req: &RequestParts<'a>, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

fn signature_error(e: HttpSignatureError) -> HubError {
    match e {
        HttpSignatureError::Malformed(m) => HubError::InvalidSignatureHeader(m),
        HttpSignatureError::UnsupportedAlgorithm(a) => {
            HubError::UnsupportedAlgorithm(format!("unsupported algorithm {a}; use ed25519"))
        }
        HttpSignatureError::InsufficientSignedHeaders => HubError::InsufficientSignedHeaders,
        HttpSignatureError::MissingSignedHeader(h) => {
            HubError::SignatureInvalid(format!("signed header {h} missing from request"))
        }
        HttpSignatureError::BadSignature => {
            HubError::SignatureInvalid("signature does not verify".into())
        }
        HttpSignatureError::MissingDate => {
            HubError::RequestExpired("Date header missing or unparsable".into())
        }
        HttpSignatureError::StaleDate => {
            HubError::RequestExpired("Date header outside the allowed clock skew".into())
        }
        HttpSignatureError::DigestMismatch => HubError::DigestMismatch,
    }
}

/// What a session token asserts.
#[derive(Debug, Serialize, Deserialize)]
struct SessionClaims {
    /// Agent id.
    sub: String,
    /// Key version at issue: rotation revokes the token.
    kv: u32,
    /// Agent creation time: deletion and re-registration revoke the token.
    ca: i64,
    /// Expiry, epoch ms.
    exp: i64,
}

/// HMAC-SHA256 key that seals session tokens.
pub(super) struct SessionKey([u8; 32]);

impl SessionKey {
    /// From `SESSION_SECRET`, or random (tokens then die with the process).
    pub(super) fn new(secret: Option<&str>) -> Self {
        match secret {
            Some(s) => SessionKey(Sha256::digest(s.as_bytes()).into()),
            None => SessionKey(rand::random()),
        }
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(payload.as_bytes());
        mac
    }

    fn seal(&self, claims: &SessionClaims) -> String {
        let payload = B64URL.encode(serde_json::to_vec(claims).unwrap_or_default());
        let tag = B64URL.encode(self.mac(&payload).finalize().into_bytes());
        format!("{SESSION_TOKEN_PREFIX}{payload}.{tag}")
    }

    fn open(&self, token: &str) -> HubResult<SessionClaims> {
        let (payload, tag) = token.split_once('.').ok_or(HubError::TokenInvalid)?;
        let tag = B64URL.decode(tag).map_err(|_| HubError::TokenInvalid)?;
        self.mac(payload)
            .verify_slice(&tag)
            .map_err(|_| HubError::TokenInvalid)?;
        let json = B64URL.decode(payload).map_err(|_| HubError::TokenInvalid)?;
        serde_json::from_slice(&json).map_err(|_| HubError::TokenInvalid)
    }
}

/// How long a nonce is remembered: twice the clock skew, so a replay with a
/// still-acceptable Date is always caught.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(2 * MAX_CLOCK_SKEW.as_secs());
/// Longest accepted `x-request-nonce` (a UUID is 36, 32 random bytes in base64 44).
pub const MAX_NONCE_LEN: usize = 128;

/// The store key of a nonce: SHA-256 of agent and nonce, hex. Fixed size
/// whatever the nonce, and agents never collide (ids cannot contain NUL).
fn nonce_key(agent_id: &str, nonce: &str) -> HubResult<String> {
    if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
        return Err(HubError::InvalidNonce(format!(
            "x-request-nonce must be 1-{MAX_NONCE_LEN} characters"
        )));
    }
    if !nonce.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HubError::InvalidNonce(
            "x-request-nonce must be visible ASCII".into(),
        ));
    }
    let mut h = Sha256::new();
    h.update(agent_id.as_bytes());
    h.update([0]);
    h.update(nonce.as_bytes());
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_round_trip_and_resist_forgery() {
        let key = SessionKey::new(Some("a-secret-that-is-long-enough-123456"));
        let claims = SessionClaims {
            sub: "alice".into(),
            kv: 1,
            ca: 5,
            exp: 10,
        };
        let token = key.seal(&claims);
        let body = token.strip_prefix(SESSION_TOKEN_PREFIX).unwrap();
        let opened = key.open(body).unwrap();
        assert_eq!(
            (opened.sub.as_str(), opened.kv, opened.exp),
            ("alice", 1, 10)
        );
        let other = SessionKey::new(None);
        assert!(matches!(other.open(body), Err(HubError::TokenInvalid)));
        let (payload, tag) = body.split_once('.').unwrap();
        let forged_payload = B64URL.encode(br#"{"sub":"eve","kv":1,"ca":5,"exp":10}"#);
        assert!(key.open(&format!("{forged_payload}.{tag}")).is_err());
        assert!(key.open(payload).is_err());
    }

    #[test]
    fn master_key_accepts_the_previous_key_only_when_configured() {
        let (new, old) = ("new-master-key-0123456789", "old-master-key-0123456789");
        assert!(master_key_matches(new, new, None));
        assert!(!master_key_matches(old, new, None));
        assert!(!master_key_matches("", new, None));
        assert!(master_key_matches(new, new, Some(old)));
        assert!(master_key_matches(old, new, Some(old)));
        assert!(!master_key_matches("other-key-0123456789", new, Some(old)));
        assert!(!master_key_matches("", new, Some(old)));
        assert!(!master_key_matches(&format!("{new}x"), new, Some(old)));
    }

    #[test]
    fn nonce_keys_are_bounded_and_per_agent() {
        let a = nonce_key("a", "n1").unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, nonce_key("a", "n1").unwrap());
        assert_ne!(a, nonce_key("b", "n1").unwrap());
        assert_ne!(
            nonce_key("a", "bn1").unwrap(),
            nonce_key("ab", "n1").unwrap()
        );
        assert!(nonce_key("a", &"x".repeat(MAX_NONCE_LEN)).is_ok());
        for bad in ["", "with space", "tab\t", "é"] {
            assert!(
                matches!(nonce_key("a", bad), Err(HubError::InvalidNonce(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            nonce_key("a", &"x".repeat(MAX_NONCE_LEN + 1)),
            Err(HubError::InvalidNonce(_))
        ));
    }
}
