//! Message encryption for Web Push (RFC 8291) in the `aes128gcm` content coding
//! (RFC 8188), one record: a fresh ephemeral P-256 key and salt per message, the
//! subscription's `p256dh` and `auth` secret, HKDF-SHA-256 and AES-128-GCM (`ring`).

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::rand::{SecureRandom as _, SystemRandom};

/// The record size announced in the header; one record carries the whole message.
const RECORD_SIZE: u32 = 4096;
/// Header (salt 16, rs 4, idlen 1, key 65) + padding delimiter (1) + tag (16).
const OVERHEAD: usize = 16 + 4 + 1 + 65 + 1 + 16;
/// The largest plaintext one record holds (push services take 4096-byte bodies).
pub(crate) const MAX_PLAINTEXT: usize = RECORD_SIZE as usize - OVERHEAD;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EceError {
    #[error("the subscription's p256dh is not a P-256 public key")]
    BadPublicKey,
    #[error("the subscription's auth secret must be 16 bytes")]
    BadAuth,
    #[error("payload of {0} bytes is larger than one record")]
    TooLarge(usize),
    #[error("encryption failed")]
    Crypto,
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[&[u8]], len: usize) -> Result<Vec<u8>, EceError> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    let okm = prk.expand(info, Len(len)).map_err(|_| EceError::Crypto)?;
    let mut out = vec![0u8; len];
    okm.fill(&mut out).map_err(|_| EceError::Crypto)?;
    Ok(out)
}

/// `plaintext` encrypted for the subscription (`ua_public`: its 65-byte `p256dh`;
/// `auth`: its 16-byte secret): the complete request body.
pub(crate) fn encrypt(
    ua_public: &[u8],
    auth: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, EceError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EceError::TooLarge(plaintext.len()));
    }
    if auth.len() != 16 {
        return Err(EceError::BadAuth);
    }
    if ua_public.len() != 65 || ua_public[0] != 0x04 {
        return Err(EceError::BadPublicKey);
    }
    let rng = SystemRandom::new();
    let ephemeral =
        EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| EceError::Crypto)?;
    let as_public = ephemeral
        .compute_public_key()
        .map_err(|_| EceError::Crypto)?;
    let as_public = as_public.as_ref().to_vec();
    let ecdh_secret = agree_ephemeral(
        ephemeral,
        &UnparsedPublicKey::new(&ECDH_P256, ua_public),
        |shared| shared.to_vec(),
    )
    .map_err(|_| EceError::BadPublicKey)?;
    // RFC 8291 §3.4: IKM from the shared secret, keyed by the auth secret.
    let ikm = hkdf(
        auth,
        &ecdh_secret,
        &[b"WebPush: info\0", ua_public, &as_public],
        32,
    )?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| EceError::Crypto)?;
    // RFC 8188 §2.2 / §2.3.
    let cek = hkdf(&salt, &ikm, &[b"Content-Encoding: aes128gcm\0"], 16)?;
    let nonce = hkdf(&salt, &ikm, &[b"Content-Encoding: nonce\0"], 12)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| EceError::Crypto)?);
    let nonce = Nonce::try_assume_unique_for_key(&nonce).map_err(|_| EceError::Crypto)?;
    let mut record = Vec::with_capacity(plaintext.len() + 17);
    record.extend_from_slice(plaintext);
    record.push(0x02); // the last record's padding delimiter
    key.seal_in_place_append_tag(nonce, Aad::empty(), &mut record)
        .map_err(|_| EceError::Crypto)?;
    let mut body = Vec::with_capacity(OVERHEAD + plaintext.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(as_public.len() as u8);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(&record);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decrypts as a user agent would (RFC 8291 §3.4 from the receiving side); the
    /// independent oracle is tests/clients/test_webpush.py (Python `http_ece`).
    #[test]
    fn a_user_agent_decrypts_what_it_receives() {
        let rng = SystemRandom::new();
        let ua_private = EphemeralPrivateKey::generate(&ECDH_P256, &rng).unwrap();
        let ua_public = ua_private.compute_public_key().unwrap().as_ref().to_vec();
        let auth = [7u8; 16];
        let body = encrypt(
            &ua_public,
            &auth,
            b"When I grow up, I want to be a watermelon",
        )
        .unwrap();

        let (salt, rest) = body.split_at(16);
        assert_eq!(&rest[..4], &4096u32.to_be_bytes());
        assert_eq!(rest[4], 65);
        let (as_public, ciphertext) = rest[5..].split_at(65);
        let secret = agree_ephemeral(
            ua_private,
            &UnparsedPublicKey::new(&ECDH_P256, as_public),
            |s| s.to_vec(),
        )
        .unwrap();
        let ikm = hkdf(
            &auth,
            &secret,
            &[b"WebPush: info\0", &ua_public, as_public],
            32,
        )
        .unwrap();
        let cek = hkdf(salt, &ikm, &[b"Content-Encoding: aes128gcm\0"], 16).unwrap();
        let nonce = hkdf(salt, &ikm, &[b"Content-Encoding: nonce\0"], 12).unwrap();
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).unwrap());
        let mut record = ciphertext.to_vec();
        let plain = key
            .open_in_place(
                Nonce::try_assume_unique_for_key(&nonce).unwrap(),
                Aad::empty(),
                &mut record,
            )
            .unwrap();
        assert_eq!(plain, b"When I grow up, I want to be a watermelon\x02");
    }

    #[test]
    fn bad_subscriptions_and_oversized_payloads_are_refused() {
        let key = [4u8; 65];
        assert_eq!(encrypt(&key, &[0; 15], b"x"), Err(EceError::BadAuth));
        assert_eq!(
            encrypt(&[0; 65], &[0; 16], b"x"),
            Err(EceError::BadPublicKey)
        );
        assert_eq!(encrypt(&key, &[0; 16], b"x"), Err(EceError::BadPublicKey));
        let big = vec![0u8; MAX_PLAINTEXT + 1];
        assert_eq!(
            encrypt(&key, &[0; 16], &big),
            Err(EceError::TooLarge(MAX_PLAINTEXT + 1))
        );
    }
}
