//! The checks every transport makes on what a publisher sent, before it builds a
//! [`super::publish::MessageDraft`]: URL fields and the scheduled-delivery window.
//!
//! They were the HTTP edge's (`api::params`) until the gRPC API (`crate::grpc`) needed
//! the same ones; reading ntfy's parameter names stays with each transport, the rule
//! is decided here once.

/// The earliest a scheduled message may be due, in seconds from now (ntfy's minimum).
pub const DELAY_MIN_SECS: i64 = 10;

/// ntfy's `^https?://` (case-sensitive, as in Go): `attach` and `icon` must match.
pub fn is_http_url(value: &str) -> bool {
    value.starts_with("http://") || value.starts_with("https://")
}

/// Why a delivery time is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DueError {
    /// Sooner than the minimum from now.
    #[error("delivery time too soon")]
    TooSoon,
    /// Further than `message-delay-limit` from now.
    #[error("delivery time too far away")]
    TooLate,
}

/// `at` (unix seconds) as a scheduled delivery time, when it lies between `min_secs`
/// ([`DELAY_MIN_SECS`] on a server) and `max_secs` (`message-delay-limit`) from `now`.
pub fn check_due(at: i64, now: i64, min_secs: i64, max_secs: i64) -> Result<i64, DueError> {
    if at < now.saturating_add(min_secs) {
        return Err(DueError::TooSoon);
    }
    if at > now.saturating_add(max_secs) {
        return Err(DueError::TooLate);
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_window() {
        assert_eq!(
            check_due(109, 100, DELAY_MIN_SECS, 3600),
            Err(DueError::TooSoon)
        );
        assert_eq!(check_due(110, 100, DELAY_MIN_SECS, 3600), Ok(110));
        assert_eq!(check_due(3700, 100, DELAY_MIN_SECS, 3600), Ok(3700));
        assert_eq!(
            check_due(3701, 100, DELAY_MIN_SECS, 3600),
            Err(DueError::TooLate)
        );
    }

    #[test]
    fn http_urls() {
        assert!(is_http_url("https://x"));
        assert!(!is_http_url("HTTPS://x"));
        assert!(!is_http_url("ftp://x"));
    }
}
