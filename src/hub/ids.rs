//! Agent id rules (PROTOCOL.md §1).

/// Longest accepted agent id.
pub const MAX_AGENT_ID_LEN: usize = 255;

/// True for 1–255 chars of `[A-Za-z0-9._:-]` not starting with `did:` or `agent:`.
pub fn is_valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_AGENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        && !id.starts_with("did:")
        && !id.starts_with("agent:")
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
    fn normalize_strips_scheme_only() {
        assert_eq!(normalize("agent://bob"), "bob");
        assert_eq!(normalize("bob"), "bob");
        assert_eq!(normalize("agent:bob"), "agent:bob");
    }
}
