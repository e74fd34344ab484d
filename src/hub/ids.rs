//! Agent id rules (PROTOCOL.md §1).

use super::{HubError, HubResult};

/// Longest accepted agent id.
pub const MAX_AGENT_ID_LEN: usize = 255;

/// Prefixes an agent id may not start with, in any letter case: such ids
/// would pass for DIDs or agent URIs.
pub const RESERVED_PREFIXES: [&str; 2] = ["did:", "agent:"];

/// Why an id is refused, the same wherever an agent id is accepted.
pub const AGENT_ID_RULE: &str = "must be 1-255 characters of [A-Za-z0-9._:-] and not start with did: or agent: (in any letter case)";

/// True for 1–255 chars of `[A-Za-z0-9._:-]` not starting with a reserved prefix.
pub fn is_valid_agent_id(id: &str) -> bool {
    is_valid_message_id(id) && !has_reserved_prefix(id)
}

/// `did:`/`agent:` in any letter case (`DID:x`, `Agent:x`).
pub fn has_reserved_prefix(id: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|prefix| {
        id.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    })
}

/// The id named in `field`, or the 400 `INVALID_INPUT` every route answers
/// for an id it would not register.
pub fn require_agent_id<'a>(field: &str, id: &'a str) -> HubResult<&'a str> {
    if is_valid_agent_id(id) {
        Ok(id)
    } else {
        Err(HubError::invalid(field, AGENT_ID_RULE))
    }
}

/// `agent://<id>` and `<id>` name the same agent: strip the scheme.
pub fn normalize(address: &str) -> &str {
    address.strip_prefix("agent://").unwrap_or(address)
}

/// A fresh id for agents registered without one.
pub fn generate_agent_id() -> String {
    format!("agent-{}", uuid::Uuid::new_v4())
}

/// Message ids appear in paths: same charset as agent ids, any prefix.
pub fn is_valid_message_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_AGENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_id_rules() {
        assert!(is_valid_agent_id("alice"));
        assert!(is_valid_agent_id("a.b_c:d-e"));
        assert!(is_valid_agent_id(&"x".repeat(255)));
        assert!(!is_valid_agent_id(&"x".repeat(256)));
        assert!(!is_valid_agent_id(""));
        assert!(!is_valid_agent_id("did:web:x"));
        assert!(!is_valid_agent_id("agent:x"));
        assert!(!is_valid_agent_id("a/b"));
        assert!(!is_valid_agent_id("a b"));
        assert!(!is_valid_agent_id("é"));
    }

    #[test]
    fn reserved_prefixes_in_any_letter_case() {
        for id in [
            "DID:spoofed",
            "Did:x",
            "dId:x",
            "AGENT:foo",
            "Agent:foo",
            "aGeNt:x",
        ] {
            assert!(has_reserved_prefix(id), "{id}");
            assert!(!is_valid_agent_id(id), "{id}");
            assert!(require_agent_id("agent_id", id).is_err(), "{id}");
        }
        for id in ["did", "agentx", "my-did:x", "agent-1", "a:did:x", "di"] {
            assert!(!has_reserved_prefix(id), "{id}");
        }
        assert_eq!(require_agent_id("agent_id", "bob").unwrap(), "bob");
    }

    #[test]
    fn normalize_strips_scheme_only() {
        assert_eq!(normalize("agent://bob"), "bob");
        assert_eq!(normalize("bob"), "bob");
        assert_eq!(normalize("agent:bob"), "agent:bob");
    }
}
