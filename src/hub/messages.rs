//! Sending and replying: envelope validation, the mandatory signature bound to
//! a registered sender, trust lists, idempotency and quotas (PROTOCOL.md §3).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::{Iso8601, Rfc3339};

use super::{Caller, Hub, HubError, HubResult, ids};
use crate::config::MAX_CLOCK_SKEW;
use crate::signing::{body_hash, envelope as envelope_sig};
use crate::store::{Agent, Delivery, Enqueued, Envelope, Message, StoreError};

/// The only envelope version this hub speaks.
pub const ENVELOPE_VERSION: &str = "1.0";
/// Longest accepted `ttl_sec` (one year).
const MAX_TTL_SEC: u64 = 365 * 86_400;
/// Longest accepted idempotency key.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A send or reply as the API layer hands it over.
pub struct SendInput<'a> {
    /// Raw request body: the body hash is computed over its `body` member exactly as V8 would.
    pub raw: &'a [u8],
    /// The parsed request body (taken by the hub as it starts).
    pub envelope: Value,
    /// `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// Who made the HTTP request.
    pub caller: &'a Caller,
    /// The caller's agent record as authentication read it: a signed send
    /// reads its sender once, not again to verify the envelope.
    pub caller_agent: Option<&'a Agent>,
}

/// A stored (or previously stored, for duplicates) message.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message: Message,
    /// The idempotency key was seen before with the same content.
    pub duplicate: bool,
}

impl Hub {
    /// `POST /api/agents/{to}/messages`: `to` defaults to the path agent.
    pub async fn send(&self, path_to: &str, mut input: SendInput<'_>) -> HubResult<Sent> {
        let mut envelope = into_object(input.envelope.take())?;
        match envelope.get("to") {
            None | Some(Value::Null) => {
                envelope.insert("to".into(), Value::String(path_to.to_string()));
            }
            Some(Value::String(to)) if ids::normalize(to) == path_to => {}
            Some(Value::String(_)) => return Err(HubError::RecipientMismatch),
            Some(_) => return Err(HubError::invalid("to", "must be a string")),
        }
        self.accept(envelope, &input).await
    }

    /// `POST /api/agents/{id}/messages/{mid}/reply`: fills `from`, `to` and
    /// `correlation_id` only when absent, never rewrites a signed field.
    pub async fn reply(
        &self,
        agent_id: &str,
        original_id: &str,
        mut input: SendInput<'_>,
    ) -> HubResult<Sent> {
        let original = self
            .store
            .get_message(original_id)
            .await?
            .ok_or_else(|| HubError::MessageNotFound(original_id.to_string()))?;
        if original.recipient != agent_id {
            return Err(HubError::Forbidden(
                "only the original recipient may reply".into(),
            ));
        }
        let original_envelope = original.envelope.to_value();
        let original_from = original_envelope
            .get("from")
            .and_then(Value::as_str)
            .unwrap_or(&original.sender)
            .to_string();
        let original_envelope_id = original_envelope.get("id").and_then(Value::as_str);
        let mut envelope = into_object(input.envelope.take())?;
        fill_or_check(&mut envelope, "from", agent_id, |given| {
            ids::normalize(given) == agent_id
        })?;
        fill_or_check(&mut envelope, "to", &original_from, |given| {
            ids::normalize(given) == original.sender
        })?;
        fill_or_check(&mut envelope, "correlation_id", original_id, |given| {
            given == original_id || Some(given) == original_envelope_id
        })?;
        self.accept(envelope, &input).await
    }

    /// The shared send pipeline: validate, verify, authorise, store, wake.
    async fn accept(&self, envelope: Map<String, Value>, input: &SendInput<'_>) -> HubResult<Sent> {
        let now = self.now();
        // A recipient no agent could have is refused before any signature work.
        if let Some(Value::String(to)) = envelope.get("to") {
            ids::require_agent_id("to", ids::normalize(to))?;
        }
        let verified = self
            .verify_signed(&envelope, input.raw, input.caller, input.caller_agent)
            .await?;
        let fields = &verified.fields;
        let from = verified.from.clone();
        let to = ids::normalize(fields.to).to_string();
        let recipient = match input.caller_agent.filter(|a| a.agent_id == to) {
            Some(own) => own.clone(),
            None => self
                .store
                .get_agent(&to)
                .await?
                .ok_or_else(|| HubError::RecipientNotFound(to.clone()))?,
        };
        if !recipient.trusted_agents.is_empty() && !recipient.trusted_agents.contains(&from) {
            return Err(HubError::SenderNotTrusted(from));
        }

        let idempotency_key = Some(verified.idempotency_key(input.idempotency_key.clone())?);
        let ttl_ms = fields.ttl_sec.unwrap_or(self.config.message_ttl_sec) as i64 * 1000;
        let id = fields
            .id
            .filter(|id| ids::is_valid_message_id(id))
            .map_or_else(new_message_id, str::to_string);
        let mut message = Message {
            content_hash: verified.content_hash(),
            idempotency_key,
            ..Message::queued(
                id,
                to.clone(),
                from,
                Envelope::from_object(&envelope),
                now,
                ttl_ms,
            )
        };
        let quota = self.config.max_messages_per_agent;
        let wants_push = recipient.webhook_url.is_some();
        let outcome = loop {
            let delivery = wants_push.then(|| Delivery::pending_for(&message, now));
            match self.store.enqueue(message.clone(), quota, delivery).await {
                // The envelope id is taken by another inbox's message: this one gets its own id.
                Err(StoreError::MessageIdTaken) => message.id = new_message_id(),
                Err(StoreError::AgentNotFound) => return Err(HubError::RecipientNotFound(to)),
                other => break other?,
            }
        };
        Ok(match outcome {
            Enqueued::Created(message) => {
                self.wakers.wake(&message.recipient);
                if wants_push {
                    self.webhook_wake.notify_one();
                }
                Sent {
                    message,
                    duplicate: false,
                }
            }
            Enqueued::Duplicate(message) => Sent {
                message,
                duplicate: true,
            },
        })
    }
}

/// An envelope whose signature was verified against its registered sender.
pub(super) struct Verified<'a> {
    pub(super) fields: EnvelopeFields<'a>,
    /// Normalised sender id.
    pub(super) from: String,
    pub(super) body_hash: String,
    /// The verified signature's 64 bytes: padding the text around them must
    /// not make a new idempotency key.
    pub(super) signature_bytes: [u8; 64],
}

impl Verified<'_> {
    /// The idempotency key of this envelope: the `Idempotency-Key` header,
    /// else the envelope id, else the signature itself (so a replayed request
    /// is a duplicate, never a second delivery).
    pub(super) fn idempotency_key(&self, header: Option<String>) -> HubResult<String> {
        match header {
            Some(key) if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN => Err(
                HubError::invalid("Idempotency-Key", "must be 1-255 characters"),
            ),
            Some(key) => Ok(key),
            None => Ok(self.fields.id.map_or_else(
                || format!("sig:{}", BASE64.encode(self.signature_bytes)),
                str::to_string,
            )),
        }
    }

    /// Identifies "the same message" for idempotency.
    pub(super) fn content_hash(&self) -> String {
        content_hash(&self.fields, &self.body_hash)
    }
}

impl Hub {
    /// Validates an envelope and verifies its signature once: timestamp
    /// inside the skew, HTTP signer = `from`, `from` registered, signature by
    /// one of its active keys over the signing base (PROTOCOL.md §3).
    pub(super) async fn verify_signed<'a>(
        &self,
        envelope: &'a Map<String, Value>,
        raw: &[u8],
        caller: &Caller,
        caller_agent: Option<&Agent>,
    ) -> HubResult<Verified<'a>> {
        let fields = EnvelopeFields::validate(envelope)?;
        check_timestamp(fields.timestamp, self.now())?;
        let from = ids::normalize(fields.from).to_string();
        if let Some(signer) = caller.agent_id()
            && signer != from
        {
            return Err(HubError::SignerMismatch {
                signer: signer.to_string(),
                from,
            });
        }
        let fetched;
        let sender = match caller_agent.filter(|a| a.agent_id == from) {
            Some(signer) => signer,
            None => {
                fetched = self
                    .store
                    .get_agent(&from)
                    .await?
                    .ok_or_else(|| HubError::UnknownSender(from.clone()))?;
                &fetched
            }
        };
        let raw_text = std::str::from_utf8(raw)
            .map_err(|_| HubError::InvalidEnvelope("body is not UTF-8".into()))?;
        let body_hash = body_hash::envelope_body_hash(raw_text)
            .map_err(|e| HubError::InvalidEnvelope(format!("invalid JSON: {e}")))?;
        let base = envelope_sig::signing_base(
            fields.timestamp,
            &body_hash,
            fields.from,
            fields.to,
            fields.correlation_id,
        );
        let signature = signature_value(envelope)?;
        let signature_bytes =
            envelope_sig::verified_signature(&base, signature, &self.verifying_keys(sender))
                .ok_or(HubError::InvalidSignature)?;
        Ok(Verified {
            fields,
            from,
            body_hash,
            signature_bytes,
        })
    }
}

pub(super) fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn into_object(envelope: Value) -> HubResult<Map<String, Value>> {
    match envelope {
        Value::Object(map) => Ok(map),
        _ => Err(HubError::InvalidEnvelope(
            "envelope must be a JSON object".into(),
        )),
    }
}

/// Sets `field` to `default` when absent; otherwise it must satisfy `agrees`.
fn fill_or_check(
    envelope: &mut Map<String, Value>,
    field: &str,
    default: &str,
    agrees: impl Fn(&str) -> bool,
) -> HubResult<()> {
    match envelope.get(field) {
        None | Some(Value::Null) => {
            envelope.insert(field.to_string(), Value::String(default.to_string()));
            Ok(())
        }
        Some(Value::String(given)) if agrees(given) => Ok(()),
        Some(_) => Err(HubError::ReplyMismatch(format!(
            "reply `{field}` contradicts the original message (expected {default})"
        ))),
    }
}

/// The envelope fields the protocol reads, borrowed from the envelope.
pub(super) struct EnvelopeFields<'a> {
    pub(super) id: Option<&'a str>,
    pub(super) msg_type: Option<&'a str>,
    pub(super) from: &'a str,
    pub(super) to: &'a str,
    pub(super) subject: &'a str,
    pub(super) correlation_id: Option<&'a str>,
    pub(super) timestamp: &'a str,
    pub(super) ttl_sec: Option<u64>,
}

impl<'a> EnvelopeFields<'a> {
    fn validate(envelope: &'a Map<String, Value>) -> HubResult<Self> {
        let required = |name: &str| -> HubResult<&'a str> {
            match envelope.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s),
                None | Some(Value::Null) => Err(HubError::InvalidEnvelope(format!(
                    "missing required field: {name}"
                ))),
                Some(Value::String(_)) => Err(HubError::InvalidEnvelope(format!(
                    "required field is empty: {name}"
                ))),
                Some(_) => Err(HubError::invalid(name, "must be a string")),
            }
        };
        let optional = |name: &str| -> HubResult<Option<&'a str>> {
            match envelope.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(HubError::invalid(name, "must be a string")),
            }
        };
        let version = match envelope.get("version") {
            None | Some(Value::Null) => {
                return Err(HubError::InvalidEnvelope(
                    "missing required field: version".into(),
                ));
            }
            Some(v) => v,
        };
        if version.as_str() != Some(ENVELOPE_VERSION) {
            return Err(HubError::InvalidEnvelope(format!(
                "unsupported envelope version {version}; expected \"{ENVELOPE_VERSION}\""
            )));
        }
        let fields = EnvelopeFields {
            from: required("from")?,
            to: required("to")?,
            subject: required("subject")?,
            timestamp: required("timestamp")?,
            id: optional("id")?,
            msg_type: optional("type")?,
            correlation_id: optional("correlation_id")?,
            ttl_sec: ttl_sec(envelope.get("ttl_sec"))?,
        };
        ids::require_agent_id("from", ids::normalize(fields.from))?;
        if let Some(headers) = envelope.get("headers")
            && !(headers.is_object() || headers.is_null())
        {
            return Err(HubError::invalid("headers", "must be an object"));
        }
        Ok(fields)
    }
}

/// `ttl_sec`: a positive integer; absent, null or 0 means the server default (as `ttl_sec || default`).
fn ttl_sec(value: Option<&Value>) -> HubResult<Option<u64>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(0.0) => Ok(None),
            Some(n) if n.fract() == 0.0 && n > 0.0 && n <= MAX_TTL_SEC as f64 => Ok(Some(n as u64)),
            _ => Err(HubError::invalid(
                "ttl_sec",
                format!("must be a whole number of seconds between 1 and {MAX_TTL_SEC}"),
            )),
        },
    }
}

fn check_timestamp(timestamp: &str, now_ms: i64) -> HubResult<()> {
    let parsed = OffsetDateTime::parse(timestamp, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(timestamp, &Iso8601::DEFAULT))
        .map_err(|_| HubError::InvalidTimestamp)?;
    let at_ms = (parsed.unix_timestamp_nanos() / 1_000_000) as i64;
    if (at_ms - now_ms).unsigned_abs() > MAX_CLOCK_SKEW.as_millis() as u64 {
        return Err(HubError::InvalidTimestamp);
    }
    Ok(())
}

/// The `signature.sig` string; missing or malformed signature objects fail verification.
fn signature_value(envelope: &Map<String, Value>) -> HubResult<&str> {
    let signature = envelope
        .get("signature")
        .and_then(Value::as_object)
        .ok_or(HubError::InvalidSignature)?;
    if let Some(alg) = signature.get("alg")
        && !alg
            .as_str()
            .is_some_and(|a| a.eq_ignore_ascii_case("ed25519"))
    {
        return Err(HubError::InvalidSignature);
    }
    signature
        .get("sig")
        .and_then(Value::as_str)
        .ok_or(HubError::InvalidSignature)
}

/// Identifies "the same message" for idempotency: sender, subject, type, correlation and body.
fn content_hash(fields: &EnvelopeFields<'_>, body_hash: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        ids::normalize(fields.from),
        fields.subject,
        fields.msg_type.unwrap_or(""),
        fields.correlation_id.unwrap_or(""),
        body_hash,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_inside_skew_only() {
        let now = 1_700_000_000_000;
        assert!(check_timestamp("2023-11-14T22:13:20Z", now).is_ok());
        assert!(check_timestamp("2023-11-14T22:13:20.500+00:00", now).is_ok());
        assert!(check_timestamp("2023-11-14T22:20:00Z", now).is_err());
        assert!(check_timestamp("yesterday", now).is_err());
    }

    #[test]
    fn ttl_rules() {
        assert_eq!(ttl_sec(None).unwrap(), None);
        assert_eq!(ttl_sec(Some(&Value::from(0))).unwrap(), None);
        assert_eq!(ttl_sec(Some(&Value::from(60))).unwrap(), Some(60));
        assert!(ttl_sec(Some(&Value::from(-1))).is_err());
        assert!(ttl_sec(Some(&Value::from(1.5))).is_err());
        assert!(ttl_sec(Some(&Value::from("60"))).is_err());
    }
}
