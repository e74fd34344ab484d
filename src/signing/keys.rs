//! Ed25519 key encodings used on the wire: standard base64 of the 32-byte
//! public key, and tweetnacl's 64-byte secret key (seed ‖ public key).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{SigningKey, VerifyingKey};

/// Decodes a base64 public key; `None` if it is not 32 valid bytes.
pub fn decode_public_key(b64: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = BASE64.decode(b64.trim()).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Encodes a public key as agents and the registry show it.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    BASE64.encode(key.as_bytes())
}

/// A fresh random signing key.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// tweetnacl's `secretKey`: base64 of seed ‖ public key (64 bytes).
pub fn encode_secret_key(key: &SigningKey) -> String {
    BASE64.encode(key.to_keypair_bytes())
}

/// Accepts a tweetnacl 64-byte secret key or a bare 32-byte seed, base64.
pub fn decode_secret_key(b64: &str) -> Option<SigningKey> {
    let bytes = BASE64.decode(b64.trim()).ok()?;
    match bytes.len() {
        32 => Some(SigningKey::from_bytes(&bytes.try_into().ok()?)),
        64 => SigningKey::from_keypair_bytes(&bytes.try_into().ok()?).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_round_trips_in_both_forms() {
        let key = generate();
        let full = decode_secret_key(&encode_secret_key(&key)).unwrap();
        assert_eq!(full.to_bytes(), key.to_bytes());
        let seed = decode_secret_key(&BASE64.encode(key.to_bytes())).unwrap();
        assert_eq!(seed.verifying_key(), key.verifying_key());
        assert!(decode_secret_key("AAAA").is_none());
    }

    #[test]
    fn public_key_must_be_32_bytes() {
        let key = generate().verifying_key();
        assert_eq!(decode_public_key(&encode_public_key(&key)), Some(key));
        assert!(decode_public_key(&BASE64.encode([1u8; 31])).is_none());
        assert!(decode_public_key("not base64!").is_none());
    }
}
