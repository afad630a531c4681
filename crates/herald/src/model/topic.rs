//! Topic names: ntfy's grammar (`^[-_A-Za-z0-9]{1,64}$`) and its reserved names.

/// Longest allowed topic name.
pub const MAX_TOPIC_LEN: usize = 64;

/// Names ntfy reserves for its own paths (`DefaultDisallowedTopics`).
pub const DEFAULT_DISALLOWED_TOPICS: &[&str] = &[
    "docs", "static", "file", "app", "metrics", "account", "settings", "signup", "login", "v1",
];

/// Whether `name` matches ntfy's topic regex. Sequence IDs share the same grammar.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_grammar() {
        assert!(is_valid_name("backups"));
        assert!(is_valid_name("a-b_C9"));
        assert!(is_valid_name(&"x".repeat(64)));
        assert!(!is_valid_name(&"x".repeat(65)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name("a,b"));
        assert!(!is_valid_name("ä"));
    }
}
