//! Both webhook signatures, for the hub that signs and the receiver that checks.
//!
//! * Standard Webhooks (<https://www.standardwebhooks.com>): `webhook-signature:
//!   v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` over the exact body
//!   bytes. Prefer it: nothing is re-serialised, so every language agrees.
//! * Compat: hex HMAC-SHA256 in the body's `signature` field over
//!   `JSON.stringify({event, message_id, envelope, delivered_at})` as the Node
//!   server and its Node receivers compute it. The hub sends the body in that
//!   very printing, so the signature also covers the body bytes as sent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{WebhookError, headers};
use crate::signing::body_hash::v8_restringify;

/// How far `webhook-timestamp` may be from the receiver's clock (Standard
/// Webhooks' recommendation), which bounds replays of a captured request.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(300);

/// The HMAC key of a webhook secret: the base64-decoded remainder of a
/// `whsec_` secret, otherwise the secret's UTF-8 bytes (also for a `whsec_`
/// secret whose remainder is not base64, which the hub refuses to store).
pub fn signing_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|rest| BASE64.decode(rest).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length")
}

/// The Standard Webhooks signature header value `v1,<base64>`.
pub fn sign(secret: &str, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = mac(&signing_key(secret));
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Receiver side: checks a Standard Webhooks request. `webhook_signature`
/// may list several space-separated signatures (secret rotation); one valid
/// `v1` signature is enough. The timestamp must be within
/// [`TIMESTAMP_TOLERANCE`] of `now`.
pub fn verify(
    secret: &str,
    webhook_id: &str,
    webhook_timestamp: &str,
    webhook_signature: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<(), WebhookError> {
    let timestamp: i64 = webhook_timestamp
        .trim()
        .parse()
        .map_err(|_| WebhookError::TimestampOutOfTolerance)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    if timestamp.abs_diff(now) > TIMESTAMP_TOLERANCE.as_secs() {
        return Err(WebhookError::TimestampOutOfTolerance);
    }
    let expected = sign(secret, webhook_id, timestamp, body);
    let matches = webhook_signature
        .split_whitespace()
        .filter(|candidate| candidate.starts_with("v1,"))
        .any(|candidate| bool::from(candidate.as_bytes().ct_eq(expected.as_bytes())));
    if matches {
        Ok(())
    } else {
        Err(WebhookError::InvalidSignature)
    }
}

/// [`verify`] reading the three `webhook-*` headers from a request (axum,
/// hyper and reqwest share this `HeaderMap`).
pub fn verify_headers(
    secret: &str,
    request_headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), WebhookError> {
    let get = |name: &'static str| {
        request_headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(WebhookError::MissingHeader(name))
    };
    verify(
        secret,
        get(headers::WEBHOOK_ID)?,
        get(headers::WEBHOOK_TIMESTAMP)?,
        get(headers::WEBHOOK_SIGNATURE)?,
        body,
        now,
    )
}

/// The compat body signature: hex HMAC-SHA256 (key: the secret's UTF-8 bytes)
/// over `unsigned_payload` as Node's `JSON.stringify` prints it, so a Node
/// receiver that re-stringifies the parsed payload gets the same bytes.
pub fn legacy_signature(secret: &str, unsigned_payload: &str) -> String {
    legacy_mac(secret, &node_json(unsigned_payload))
}

/// `JSON.stringify(JSON.parse(text))` as Node prints it. Only a nesting
/// deeper than the V8 module's guard can fail here; the text is then kept
/// as it is, the closest thing to what Node would print.
pub fn node_json(text: &str) -> String {
    v8_restringify(text).unwrap_or_else(|_| text.to_string())
}

/// Hex HMAC-SHA256 of text already in Node's printing (see [`node_json`]).
pub(super) fn legacy_mac(secret: &str, node_json: &str) -> String {
    let mut mac = mac(secret.as_bytes());
    mac.update(node_json.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Receiver side: checks the compat `signature` field of a webhook body.
/// It offers no replay protection; use [`verify`] where you can.
pub fn verify_legacy_signature(secret: &str, body: &[u8]) -> Result<(), WebhookError> {
    let mut payload: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| WebhookError::InvalidBody(e.to_string()))?;
    let given = match payload.shift_remove("signature") {
        Some(Value::String(s)) => s,
        _ => return Err(WebhookError::InvalidBody("no signature field".into())),
    };
    let unsigned =
        serde_json::to_string(&payload).map_err(|e| WebhookError::InvalidBody(e.to_string()))?;
    let expected = legacy_signature(secret, &unsigned);
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(WebhookError::InvalidSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published Standard Webhooks test vector.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TIMESTAMP: i64 = 1_649_367_553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn at(unix: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix as u64)
    }

    #[test]
    fn standard_webhooks_test_vector() {
        assert_eq!(sign(SECRET, ID, TIMESTAMP, BODY), SIGNATURE);
        verify(SECRET, ID, "1649367553", SIGNATURE, BODY, at(TIMESTAMP)).unwrap();
    }

    #[test]
    fn verify_accepts_any_listed_signature_and_rejects_tampering() {
        let listed = format!("v1,bm90LWl0 {SIGNATURE}");
        verify(SECRET, ID, "1649367553", &listed, BODY, at(TIMESTAMP + 10)).unwrap();
        let tampered = br#"{"email":"eve@example.com","username":"test_user"}"#;
        assert_eq!(
            verify(SECRET, ID, "1649367553", SIGNATURE, tampered, at(TIMESTAMP)),
            Err(WebhookError::InvalidSignature)
        );
        assert_eq!(
            verify(
                SECRET,
                "msg_other",
                "1649367553",
                SIGNATURE,
                BODY,
                at(TIMESTAMP)
            ),
            Err(WebhookError::InvalidSignature)
        );
        assert_eq!(
            verify(
                SECRET,
                ID,
                "1649367553",
                "v2,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
                BODY,
                at(TIMESTAMP)
            ),
            Err(WebhookError::InvalidSignature)
        );
    }

    #[test]
    fn verify_enforces_the_timestamp_tolerance() {
        let late = at(TIMESTAMP + TIMESTAMP_TOLERANCE.as_secs() as i64 + 1);
        assert_eq!(
            verify(SECRET, ID, "1649367553", SIGNATURE, BODY, late),
            Err(WebhookError::TimestampOutOfTolerance)
        );
        assert_eq!(
            verify(SECRET, ID, "soon", SIGNATURE, BODY, at(TIMESTAMP)),
            Err(WebhookError::TimestampOutOfTolerance)
        );
    }

    #[test]
    fn plain_secrets_sign_with_their_utf8_bytes() {
        assert_eq!(signing_key("s3cret"), b"s3cret");
        assert_eq!(signing_key("whsec_!!"), b"whsec_!!");
        assert_eq!(signing_key("whsec_AAEC"), [0u8, 1, 2]);
    }

    #[test]
    fn legacy_signature_matches_node_json_stringify() {
        // A Node receiver re-stringifies the parsed payload, which moves
        // integer-like keys first and prints 1.0 as 1. Expected value from node:
        //   crypto.createHmac('sha256', 's3cret')
        //     .update(JSON.stringify(JSON.parse(unsigned))).digest('hex')
        let unsigned = r#"{"event":"message.received","message_id":"m1","envelope":{"b":{"2":1,"1":1.0}},"delivered_at":"2026-01-01T00:00:00.000Z"}"#;
        assert_eq!(
            legacy_signature("s3cret", unsigned),
            "de6551f19d0efcfcf0095539bda8141f339b094d1df25091cad5a6296cfd2cc6"
        );
    }

    #[test]
    fn legacy_verification_needs_the_signature_field() {
        assert!(matches!(
            verify_legacy_signature("s", br#"{"event":"message.received"}"#),
            Err(WebhookError::InvalidBody(_))
        ));
        assert!(matches!(
            verify_legacy_signature("s", b"not json"),
            Err(WebhookError::InvalidBody(_))
        ));
    }
}
