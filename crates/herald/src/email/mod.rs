//! E-mail, both ways, as ntfy has it (docs/EMAIL.md).
//!
//! - **Outgoing** ([`outgoing`]): a publish with `X-Email: <address>` is also sent
//!   as a plain-text mail through the SMTP relay `smtp-sender-addr`. The publish
//!   path only validates the address and charges the visitor's e-mail limit; once
//!   the message is committed, the core hands the mail to a durable queue (SQLite
//!   `mail.db`, or Redis in cluster mode) and answers the publisher. Senders claim
//!   queued mail under a lease, send it with `lettre` (rustls), and retry with
//!   backoff, so neither a relay outage nor a crash loses an accepted mail.
//! - **Incoming** ([`incoming`]): `smtp-server-listen` accepts mail for
//!   `<prefix><topic>[+<token>]@<smtp-server-domain>` and publishes it through the
//!   core like any other transport, with access control through the token.

pub(crate) mod incoming;
pub(crate) mod outgoing;

use std::path::PathBuf;
use std::time::Duration;

pub use outgoing::{Outbox, SenderTls};

/// The retry schedule of outgoing mail: the delay before each attempt after the
/// first; after the last one the mail is given up (and counted).
pub const DEFAULT_RETRY_SCHEDULE: &str = "10s,30s,2m,10m,30m,1h,2h,4h";

/// The outgoing relay (`smtp-sender-*`); `None` in [`EmailConfig`] when
/// `smtp-sender-addr` is empty.
#[derive(Clone)]
pub struct SenderConfig {
    /// `host:port` of the relay.
    pub addr: String,
    pub user: String,
    pub pass: String,
    /// The envelope and `From:` address.
    pub from: String,
    /// How the connection is secured (`smtp-sender-tls`, a herald addition).
    pub tls: SenderTls,
    /// Delays before the retries (`smtp-sender-retry-schedule`).
    pub retry_schedule: Vec<Duration>,
    /// SQLite file of the mail queue (single node).
    pub queue_file: PathBuf,
}

impl std::fmt::Debug for SenderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderConfig")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("from", &self.from)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The incoming SMTP server (`smtp-server-*`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `:25`.
    pub listen: String,
    /// The domain mail is accepted for (`ntfy.example.com`).
    pub domain: String,
    /// Local-part prefix before the topic (`ntfy-`), may be empty.
    pub addr_prefix: String,
}

/// Both directions; either may be off.
#[derive(Debug, Clone, Default)]
pub struct EmailConfig {
    pub sender: Option<SenderConfig>,
    pub server: Option<ServerConfig>,
}

/// ntfy's address check (`^[^\s,;]+@[^\s,;]+$`), and one lettre accepts, so that a
/// queued mail can always be addressed.
pub fn is_valid_address(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    let plain =
        |p: &str| !p.is_empty() && !p.chars().any(|c| c.is_whitespace() || c == ',' || c == ';');
    plain(local) && plain(domain) && s.parse::<lettre::Address>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(is_valid_address("phil@example.com"));
        assert!(is_valid_address("a.b+c@sub.example.org"));
        for bad in [
            "",
            "phil",
            "@example.com",
            "phil@",
            "a b@c.d",
            "a@b,c",
            "a;b@c.d",
            "a@b@",
        ] {
            assert!(!is_valid_address(bad), "{bad}");
        }
    }
}
