//! The notification request: compat JSON body with its `signature` field, and
//! the headers of both signature schemes.

use serde::Serialize;

use super::signature::legacy_mac;
use super::{EVENT_MESSAGE_RECEIVED, USER_AGENT, headers, node_json, sign};
use crate::store::Envelope;

/// One attempt of one delivery: everything the request is built from.
#[derive(Debug, Clone, Copy)]
pub struct Notification<'a> {
    /// Delivery id, sent as `webhook-id` (stable across retries).
    pub delivery_id: &'a str,
    pub message_id: &'a str,
    /// The envelope as stored, delivered verbatim.
    pub envelope: &'a Envelope,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When this attempt is made, epoch milliseconds.
    pub at_ms: i64,
}

/// A fully built, signed request, ready for any HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    /// Lowercase header names and their values, `Content-Type` included.
    pub headers: Vec<(&'static str, String)>,
    /// The exact bytes the Standard Webhooks signature covers.
    pub body: Vec<u8>,
}

/// The compat body without its `signature`; field order is the signed key order.
#[derive(Serialize)]
struct Payload<'a> {
    event: &'a str,
    message_id: &'a str,
    envelope: &'a Envelope,
    /// Epoch milliseconds, a number, as the Node server's `Date.now()`.
    delivered_at: i64,
}

impl Notification<'_> {
    /// Builds the body and headers, signed with the agent's webhook secrets:
    /// the compat body signature with the first (current) one, the Standard
    /// Webhooks header with each of them (`v1,<a> v1,<b>` during a rotation).
    /// An agent without a secret (imported from the old server) signs with "".
    pub fn build(&self, secrets: &[&str]) -> WebhookRequest {
        let secrets = if secrets.is_empty() { &[""] } else { secrets };
        let payload = Payload {
            event: EVENT_MESSAGE_RECEIVED,
            message_id: self.message_id,
            envelope: self.envelope,
            delivered_at: self.at_ms,
        };
        let compact = serde_json::to_string(&payload).expect("a JSON value always serialises");
        // The body is sent in Node's printing, so the compat signature covers
        // the body as sent (up to its own field) and a Node receiver that
        // re-stringifies the parsed payload gets the same bytes back.
        let unsigned = node_json(&compact);
        let compat_signature = legacy_mac(secrets[0], &unsigned);
        let body = with_signature(&unsigned, &compat_signature).into_bytes();

        let timestamp = self.at_ms.div_euclid(1000);
        let standard_signature = secrets
            .iter()
            .map(|secret| sign(secret, self.delivery_id, timestamp, &body))
            .collect::<Vec<_>>()
            .join(" ");
        let headers = vec![
            ("content-type", "application/json".to_string()),
            ("user-agent", USER_AGENT.to_string()),
            (headers::EVENT, EVENT_MESSAGE_RECEIVED.to_string()),
            (headers::MESSAGE_ID, self.message_id.to_string()),
            (headers::DELIVERY_ATTEMPT, self.attempt.to_string()),
            (headers::WEBHOOK_ID, self.delivery_id.to_string()),
            (headers::WEBHOOK_TIMESTAMP, timestamp.to_string()),
            (headers::WEBHOOK_SIGNATURE, standard_signature),
        ];
        WebhookRequest { headers, body }
    }
}

/// `{…}` + `,"signature":"<hex>"}`: the signature as the last member.
fn with_signature(unsigned: &str, signature: &str) -> String {
    let open = unsigned
        .strip_suffix('}')
        .expect("the payload is a JSON object");
    format!("{open},\"signature\":\"{signature}\"}}")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::{Value, json};

    use super::*;
    use crate::webhook::{legacy_signature, verify, verify_legacy_signature};

    fn header<'a>(request: &'a WebhookRequest, name: &str) -> &'a str {
        request
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("header {name} missing"))
    }

    #[test]
    fn request_carries_both_signatures_and_compat_headers() {
        let envelope = json!({"version": "1.0", "from": "agent://a", "to": "agent://b",
            "subject": "hi", "body": {"b": 1, "a": [1.5, "é"]}});
        let at_ms = 1_700_000_000_123;
        let request = Notification {
            delivery_id: "wh_1",
            message_id: "m-1",
            envelope: &Envelope::from(envelope.clone()),
            attempt: 3,
            at_ms,
        }
        .build(&["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]);

        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "event",
                "message_id",
                "envelope",
                "delivered_at",
                "signature"
            ]
        );
        assert_eq!(body["event"], "message.received");
        assert_eq!(body["envelope"], envelope);
        assert_eq!(body["delivered_at"], at_ms);

        assert_eq!(header(&request, "content-type"), "application/json");
        assert_eq!(header(&request, "user-agent"), "ADMP-Server/1.0");
        assert_eq!(header(&request, "x-admp-event"), "message.received");
        assert_eq!(header(&request, "x-admp-message-id"), "m-1");
        assert_eq!(header(&request, "x-admp-delivery-attempt"), "3");
        assert_eq!(header(&request, "webhook-id"), "wh_1");
        assert_eq!(header(&request, "webhook-timestamp"), "1700000000");

        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        verify_legacy_signature(secret, &request.body).unwrap();
        let now = UNIX_EPOCH + Duration::from_millis(at_ms as u64);
        verify(
            secret,
            header(&request, "webhook-id"),
            header(&request, "webhook-timestamp"),
            header(&request, "webhook-signature"),
            &request.body,
            now,
        )
        .unwrap();
        assert!(verify_legacy_signature("whsec_other", &request.body).is_err());
    }

    #[test]
    fn compat_signature_covers_the_body_as_sent() {
        // Integer-like keys and `1.0`: Node's printing differs from serde's.
        let envelope = json!({"from": "a", "body": {"b": 1.0, "2": "x", "1": "y"}});
        let request = Notification {
            delivery_id: "wh_1",
            message_id: "m-1",
            envelope: &Envelope::from(envelope),
            attempt: 1,
            at_ms: 1_700_000_000_123,
        }
        .build(&["s3cret"]);
        let body = String::from_utf8(request.body).unwrap();
        let (unsigned, signature) = body.rsplit_once(",\"signature\":\"").unwrap();
        let signature = signature.strip_suffix("\"}").unwrap();
        let unsigned = format!("{unsigned}}}");
        assert_eq!(
            unsigned,
            r#"{"event":"message.received","message_id":"m-1","envelope":{"from":"a","body":{"1":"y","2":"x","b":1}},"delivered_at":1700000000123}"#
        );
        assert_eq!(node_json(&unsigned), unsigned, "already in Node's printing");
        assert_eq!(signature, legacy_signature("s3cret", &unsigned));
        verify_legacy_signature("s3cret", body.as_bytes()).unwrap();
    }
}
