//! The ADMP envelope signature: Ed25519 over
//! `timestamp \n bodyHash \n from \n to \n correlation_id`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::{Map, Value, json};

use super::body_hash::body_hash;

/// The exact string a sender signs (PROTOCOL.md §3).
pub fn signing_base(
    timestamp: &str,
    body_hash: &str,
    from: &str,
    to: &str,
    correlation_id: Option<&str>,
) -> String {
    format!(
        "{timestamp}\n{body_hash}\n{from}\n{to}\n{}",
        correlation_id.unwrap_or("")
    )
}

/// True if `signature_b64` is a valid signature of `base` by any of `keys`.
pub fn verify(base: &str, signature_b64: &str, keys: &[VerifyingKey]) -> bool {
    verified_signature(base, signature_b64, keys).is_some()
}

/// The 64 signature bytes when `signature_b64` verifies `base` under any of
/// `keys`. The bytes, not the text, identify a signature: surrounding
/// whitespace is trimmed before decoding, so two spellings of one signature
/// must give one idempotency key.
pub fn verified_signature(
    base: &str,
    signature_b64: &str,
    keys: &[VerifyingKey],
) -> Option<[u8; 64]> {
    let bytes = BASE64.decode(signature_b64.trim()).ok()?;
    let signature = Signature::from_slice(&bytes).ok()?;
    keys.iter()
        .any(|key| key.verify_strict(base.as_bytes(), &signature).is_ok())
        .then(|| signature.to_bytes())
}

/// Client side: fills `signature` of an envelope whose `timestamp`, `from`,
/// `to` and optional `correlation_id` and `body` are already set.
pub fn sign_envelope(envelope: &mut Map<String, Value>, key: &SigningKey) {
    let text = |name: &str| {
        envelope
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let from = text("from");
    let base = signing_base(
        &text("timestamp"),
        &body_hash(envelope.get("body")),
        &from,
        &text("to"),
        envelope.get("correlation_id").and_then(Value::as_str),
    );
    let signature = key.sign(base.as_bytes());
    envelope.insert(
        "signature".into(),
        json!({
            "alg": "ed25519",
            "kid": from.strip_prefix("agent://").unwrap_or(&from),
            "sig": BASE64.encode(signature.to_bytes()),
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::keys;

    #[test]
    fn signing_base_has_five_lines_and_no_trailing_newline() {
        let base = signing_base("2026-01-01T00:00:00.000Z", "H", "a", "b", None);
        assert_eq!(base, "2026-01-01T00:00:00.000Z\nH\na\nb\n");
        let base = signing_base("t", "H", "agent://a", "agent://b", Some("c-1"));
        assert_eq!(base, "t\nH\nagent://a\nagent://b\nc-1");
    }

    #[test]
    fn signed_envelope_verifies_and_tampering_breaks_it() {
        let key = keys::generate();
        let mut envelope = json!({
            "version": "1.0", "from": "agent://alice", "to": "bob", "subject": "hi",
            "timestamp": "2026-01-01T00:00:00Z", "body": {"n": 1}
        })
        .as_object()
        .unwrap()
        .clone();
        sign_envelope(&mut envelope, &key);
        assert_eq!(envelope["signature"]["kid"], "alice");
        let sig = envelope["signature"]["sig"].as_str().unwrap();
        let good = signing_base(
            "2026-01-01T00:00:00Z",
            &body_hash(Some(&json!({"n": 1}))),
            "agent://alice",
            "bob",
            None,
        );
        assert!(verify(&good, sig, &[key.verifying_key()]));
        let tampered = good.replace("bob", "eve");
        assert!(!verify(&tampered, sig, &[key.verifying_key()]));
        let other = keys::generate().verifying_key();
        assert!(!verify(&good, sig, &[other]));
        assert!(verify(&good, sig, &[other, key.verifying_key()]));
        assert!(!verify(&good, "not-base64", &[key.verifying_key()]));
    }
}
