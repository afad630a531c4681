//! Standard Webhooks signatures (symmetric, `v1`).
//!
//! Receivers verify herald's requests with any Standard Webhooks library, so this
//! follows the spec exactly: the signed content is `{webhook-id}.{webhook-timestamp}.{body}`
//! (the exact body bytes sent), the signature is `v1,` + base64(HMAC-SHA256), the key
//! is the base64-decoded part of the secret after `whsec_`, and while a rotated secret
//! is in its grace period both signatures go in one header, space-separated.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

/// The prefix of every secret (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a generated secret (the spec asks for 24 to 64).
const SECRET_BYTES: usize = 32;

/// A secret that is not `whsec_` + base64 of 24 to 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret must be \"whsec_\" followed by base64 of 24 to 64 random bytes")]
pub struct InvalidSecret;

/// A validated signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    text: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A new random secret.
    pub fn generate() -> Secret {
        let key: Vec<u8> = (0..SECRET_BYTES).map(|_| fastrand::u8(..)).collect();
        Secret {
            text: format!("{SECRET_PREFIX}{}", STANDARD.encode(&key)),
            key,
        }
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Secret, InvalidSecret> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(InvalidSecret)?;
        let key = STANDARD.decode(encoded).map_err(|_| InvalidSecret)?;
        if !(24..=64).contains(&key.len()) {
            return Err(InvalidSecret);
        }
        Ok(Secret {
            text: text.to_string(),
            key,
        })
    }

    /// The secret as users see and store it (`whsec_...`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header value: one signature per secret, space-separated
/// (the current secret first, then a rotated-out one still in its grace period).
pub fn signature_header(secrets: &[&Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_and_generate() {
        let s = Secret::generate();
        assert!(s.as_str().starts_with("whsec_"));
        assert_eq!(Secret::parse(s.as_str()).unwrap(), s);
        assert!(Secret::parse("whsec_short").is_err());
        assert!(Secret::parse("nope").is_err());
        assert!(Secret::parse("whsec_!!!!").is_err());
    }

    /// The Standard Webhooks reference implementation accepts what we sign, with
    /// either of two rotated secrets.
    #[test]
    fn the_reference_library_verifies_our_signatures() {
        let (new, old) = (Secret::generate(), Secret::generate());
        let body = br#"{"type":"message","data":{"id":"x"}}"#;
        let ts = chrono::Utc::now().timestamp();
        let header = signature_header(&[&new, &old], "msg_1", ts, body);
        assert_eq!(header.split(' ').count(), 2);
        for secret in [&new, &old] {
            let wh = standardwebhooks::Webhook::new(secret.as_str()).unwrap();
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("webhook-id", "msg_1".parse().unwrap());
            headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
            headers.insert("webhook-signature", header.parse().unwrap());
            wh.verify(body, &headers).unwrap();
        }
        let other = standardwebhooks::Webhook::new(Secret::generate().as_str()).unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        headers.insert("webhook-signature", header.parse().unwrap());
        assert!(other.verify(body, &headers).is_err());
    }

    /// The spec's published test vector.
    #[test]
    fn matches_the_spec_vector() {
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            s.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
