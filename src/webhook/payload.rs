//! The notification request: compat JSON body with its `signature` field, and
//! the headers of both signature schemes.

use serde::Serialize;
use time::OffsetDateTime;
use time::macros::format_description;

use super::{EVENT_MESSAGE_RECEIVED, USER_AGENT, headers, legacy_signature, sign};
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

/// The compat body; field order is the signed key order.
#[derive(Serialize)]
struct Payload<'a> {
    event: &'a str,
    message_id: &'a str,
    envelope: &'a Envelope,
    delivered_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a str>,
}

impl Notification<'_> {
    /// Builds the body and headers, signed with the agent's webhook secrets:
    /// the compat body signature with the first (current) one, the Standard
    /// Webhooks header with each of them (`v1,<a> v1,<b>` during a rotation).
    /// An agent without a secret (imported from the old server) signs with "".
    pub fn build(&self, secrets: &[&str]) -> WebhookRequest {
        let secrets = if secrets.is_empty() { &[""] } else { secrets };
        let secret = secrets[0];
        let delivered_at = format_delivered_at(self.at_ms);
        let mut payload = Payload {
            event: EVENT_MESSAGE_RECEIVED,
            message_id: self.message_id,
            envelope: self.envelope,
            delivered_at: &delivered_at,
            signature: None,
        };
        let unsigned = serde_json::to_string(&payload).expect("a JSON value always serialises");
        let compat_signature = legacy_signature(secret, &unsigned);
        payload.signature = Some(&compat_signature);
        let body = serde_json::to_vec(&payload).expect("a JSON value always serialises");

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

/// `delivered_at` as the Node server wrote it (`Date.toISOString()`):
/// `2026-01-02T03:04:05.678Z`.
pub fn format_delivered_at(at_ms: i64) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::{Value, json};

    use super::*;
    use crate::webhook::{verify, verify_legacy_signature};

    fn header<'a>(request: &'a WebhookRequest, name: &str) -> &'a str {
        request
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("header {name} missing"))
    }

    #[test]
    fn delivered_at_is_iso_with_milliseconds() {
        assert_eq!(
            format_delivered_at(1_649_367_553_042),
            "2022-04-07T21:39:13.042Z"
        );
        assert_eq!(format_delivered_at(0), "1970-01-01T00:00:00.000Z");
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
        assert_eq!(body["delivered_at"], "2023-11-14T22:13:20.123Z");

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
}
