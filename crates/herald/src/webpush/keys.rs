//! VAPID keys (RFC 8292): the server's P-256 key pair, in ntfy's notation (base64url,
//! no padding: the 65-byte uncompressed public point and the 32-byte private scalar),
//! and the signed JWT every push request carries.
//!
//! Built on `ring`, which the binary already links for TLS, so Web Push adds no
//! cryptography crate (and no OpenSSL).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("VAPID keys must be base64url: {0}")]
    Encoding(&'static str),
    #[error("the VAPID public key is not the private key's (or not a P-256 key)")]
    Mismatch,
    #[error("could not generate or use a P-256 key")]
    Crypto,
}

/// The server's VAPID key pair.
pub struct VapidKeys {
    pair: EcdsaKeyPair,
    private: [u8; 32],
    rng: SystemRandom,
}

impl fmt::Debug for VapidKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VapidKeys")
            .field("public", &self.public_base64())
            .finish_non_exhaustive()
    }
}

fn decode(s: &str, what: &'static str) -> Result<Vec<u8>, KeyError> {
    URL_SAFE_NO_PAD
        .decode(s.trim().trim_end_matches('='))
        .map_err(|_| KeyError::Encoding(what))
}

impl VapidKeys {
    /// The pair from ntfy's `web-push-public-key` / `web-push-private-key` values;
    /// the public key must belong to the private one.
    pub fn from_base64(public: &str, private: &str) -> Result<VapidKeys, KeyError> {
        let public = decode(public, "web-push-public-key")?;
        let private = decode(private, "web-push-private-key")?;
        let private: [u8; 32] = private.try_into().map_err(|_| KeyError::Mismatch)?;
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &private,
            &public,
            &rng,
        )
        .map_err(|_| KeyError::Mismatch)?;
        Ok(VapidKeys { pair, private, rng })
    }

    /// A new random pair (`herald webpush keys`).
    pub fn generate() -> Result<VapidKeys, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError::Crypto)?;
        let private = private_scalar(pkcs8.as_ref()).ok_or(KeyError::Crypto)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| KeyError::Crypto)?;
        Ok(VapidKeys { pair, private, rng })
    }

    /// The public key as the browser's `applicationServerKey` wants it.
    pub fn public_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref())
    }

    /// The private scalar, base64url (printed once by `herald webpush keys`).
    pub fn private_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.private)
    }

    /// The `Authorization` header value for a push to `endpoint`'s origin (RFC 8292
    /// §3: `vapid t=<JWT>, k=<public key>`), valid for 12 hours from `now`.
    pub fn authorization(
        &self,
        audience: &str,
        subject: &str,
        now: i64,
    ) -> Result<String, KeyError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({
            "aud": audience,
            "exp": now + 12 * 3600,
            "sub": subject,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        // FIXED signing: the JWS form (r || s, 64 bytes), not DER.
        let sig = self
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| KeyError::Crypto)?;
        Ok(format!(
            "vapid t={signing_input}.{}, k={}",
            URL_SAFE_NO_PAD.encode(sig.as_ref()),
            self.public_base64()
        ))
    }
}

/// The private scalar inside ring's P-256 PKCS#8 document: the `ECPrivateKey`'s
/// `version 1` followed by its 32-byte OCTET STRING (RFC 5915 §3).
fn private_scalar(pkcs8: &[u8]) -> Option<[u8; 32]> {
    const MARKER: [u8; 5] = [0x02, 0x01, 0x01, 0x04, 0x20];
    let at = pkcs8.windows(MARKER.len()).position(|w| w == MARKER)? + MARKER.len();
    pkcs8.get(at..at + 32)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_their_base64() {
        let keys = VapidKeys::generate().unwrap();
        let again = VapidKeys::from_base64(&keys.public_base64(), &keys.private_base64()).unwrap();
        assert_eq!(again.public_base64(), keys.public_base64());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(keys.public_base64()).unwrap().len(),
            65
        );
    }

    #[test]
    fn a_foreign_public_key_or_bad_base64_is_refused() {
        let a = VapidKeys::generate().unwrap();
        let b = VapidKeys::generate().unwrap();
        assert!(VapidKeys::from_base64(&a.public_base64(), &b.private_base64()).is_err());
        assert!(VapidKeys::from_base64("!!", &a.private_base64()).is_err());
        assert!(VapidKeys::from_base64(&a.public_base64(), "AAAA").is_err());
    }

    #[test]
    fn the_jwt_verifies_with_the_public_key() {
        use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
        let keys = VapidKeys::generate().unwrap();
        let auth = keys
            .authorization("https://push.example", "mailto:a@example.com", 1_000)
            .unwrap();
        let jwt = auth
            .strip_prefix("vapid t=")
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let public = URL_SAFE_NO_PAD.decode(keys.public_base64()).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public)
            .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
            .unwrap();
        let claims = URL_SAFE_NO_PAD
            .decode(input.split('.').nth(1).unwrap())
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["aud"], "https://push.example");
        assert_eq!(claims["exp"], 1_000 + 43_200);
    }
}
