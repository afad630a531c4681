//! Access tokens: `tk_` + 29 characters of `[a-z0-9]` (ntfy's format; lowercase so a
//! token fits an e-mail local part), about 150 bits of randomness.
//!
//! Only the SHA-256 digest of a token is stored: tokens are high-entropy secrets, so
//! a fast hash is enough (a slow one on every request would be a CPU-exhaustion
//! vector and buy nothing), and a leaked database does not leak usable tokens. The
//! stored digest is compared with the presented token's digest in constant time.
//! For listing, a token is shown by its first characters ([`display`]), which also
//! select it for the extend/delete endpoints and `herald token remove`.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// ntfy's token prefix.
pub const PREFIX: &str = "tk_";
/// Total token length (prefix included), as in ntfy.
pub const LENGTH: usize = 32;
/// Characters of a token shown in listings (prefix included): `tk_` + 8.
pub const SHOWN: usize = 11;
/// Most tokens per user (ntfy's `tokenMaxCount`); creating more removes the oldest.
pub const MAX_PER_USER: usize = 60;
/// The prefix of webhook management tokens (`whm_`, issued by the webhook API).
/// Defined here, with the other token formats, because the authorizer must
/// recognise them (to treat them as no login at all) without depending on the
/// webhook module, which depends on this one.
pub const WEBHOOK_MANAGEMENT_PREFIX: &str = "whm_";
/// Latest expiry accepted, 9999-12-31T23:59:59Z: later ones are typing mistakes,
/// and past what Redis's `EXPIREAT` (milliseconds) can hold in cluster mode.
pub const MAX_EXPIRES: i64 = 253_402_300_799;

/// Whether `token` has a webhook management token's prefix (not necessarily a
/// valid one).
pub fn is_webhook_management(token: &str) -> bool {
    token.starts_with(WEBHOOK_MANAGEMENT_PREFIX)
}

/// Whether `expires` is an expiry a token may have: `0` (never) or a unix time up to
/// [`MAX_EXPIRES`]. A negative one would be read as "never" (only positive expiries
/// are enforced), so a client asking for an already-expired token would get an
/// eternal one.
pub fn expiry_is_valid(expires: i64) -> bool {
    (0..=MAX_EXPIRES).contains(&expires)
}

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// The SHA-256 digest a token is stored and looked up by.
pub type TokenDigest = [u8; 32];

/// A new random token.
pub fn generate() -> Result<String, getrandom::Error> {
    generate_with_prefix(PREFIX, LENGTH - PREFIX.len())
}

/// `prefix` + `random` characters of `[a-z0-9]` from the OS generator (also the
/// shape of webhook management tokens, `whm_...`).
pub fn generate_with_prefix(prefix: &str, random: usize) -> Result<String, getrandom::Error> {
    let length = prefix.len() + random;
    let mut token = String::with_capacity(length);
    token.push_str(prefix);
    // Rejection sampling keeps every character uniform (256 = 7 * 36 + 4).
    let mut buf = [0u8; 64];
    while token.len() < length {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            if token.len() == length {
                break;
            }
            if (b as usize) < 252 {
                token.push(ALPHABET[b as usize % 36] as char);
            }
        }
    }
    Ok(token)
}

/// Whether `s` has the shape of a token.
pub fn is_well_formed(s: &str) -> bool {
    s.len() == LENGTH
        && s.starts_with(PREFIX)
        && s[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The digest of a token.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// A digest as 64 lowercase hex characters (how the Redis stores keep it).
pub fn digest_hex(digest: &TokenDigest) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The digest [`digest_hex`] wrote; `None` if `s` is not one.
pub fn digest_from_hex(s: &str) -> Option<TokenDigest> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut d = [0u8; 32];
    for (i, byte) in d.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(d)
}

/// Constant-time equality of two digests.
pub fn digests_equal(a: &TokenDigest, b: &TokenDigest) -> bool {
    a.ct_eq(b).into()
}

/// How a token is shown once created: `tk_abcdefgh...`.
pub fn display(token: &str) -> String {
    format!("{}...", &token[..SHOWN.min(token.len())])
}

/// The shown part of a token (`tk_abcdefgh`), stored next to its digest.
pub fn shown_part(token: &str) -> &str {
    &token[..SHOWN.min(token.len())]
}

/// What a client wrote to pick one of its tokens: the whole token, or its shown
/// part (with or without the trailing `...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    Full(TokenDigest),
    Shown(String),
}

impl TokenSelector {
    /// Parses a selector; `None` if it cannot name a token.
    pub fn parse(s: &str) -> Option<TokenSelector> {
        let s = s.trim();
        if is_well_formed(s) {
            return Some(TokenSelector::Full(digest(s)));
        }
        let shown = s.strip_suffix("...").unwrap_or(s);
        if shown.len() == SHOWN
            && shown.starts_with(PREFIX)
            && shown[PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Some(TokenSelector::Shown(shown.to_string()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_never_or_a_plausible_unix_time() {
        assert!(expiry_is_valid(0));
        assert!(expiry_is_valid(1_700_000_000));
        assert!(expiry_is_valid(MAX_EXPIRES));
        assert!(!expiry_is_valid(-5));
        assert!(!expiry_is_valid(i64::MIN));
        assert!(!expiry_is_valid(MAX_EXPIRES + 1));
        assert!(!expiry_is_valid(i64::MAX));
    }

    #[test]
    fn tokens_have_ntfys_shape() {
        let t = generate().unwrap();
        assert_eq!(t.len(), 32);
        assert!(is_well_formed(&t), "{t}");
        assert_ne!(generate().unwrap(), t);
        assert!(!is_well_formed("tk_ABC"));
        assert!(digests_equal(&digest(&t), &digest(&t)));
        assert!(!digests_equal(&digest(&t), &digest("tk_other")));
        assert_eq!(display(&t).len(), SHOWN + 3);
    }

    #[test]
    fn selectors() {
        let t = generate().unwrap();
        assert_eq!(
            TokenSelector::parse(&t),
            Some(TokenSelector::Full(digest(&t)))
        );
        assert_eq!(
            TokenSelector::parse(&display(&t)),
            Some(TokenSelector::Shown(shown_part(&t).to_string()))
        );
        assert_eq!(
            TokenSelector::parse(shown_part(&t)),
            Some(TokenSelector::Shown(shown_part(&t).to_string()))
        );
        assert_eq!(TokenSelector::parse("tk_"), None);
        assert_eq!(TokenSelector::parse("nonsense"), None);
    }
}
