//! Sealing of the few upstream secrets mxidp must keep (the IdP's refresh token, to end a
//! session at the IdP; the IdP's tokens between the callback and the code redemption).
//! XChaCha20-Poly1305 with a key derived by HKDF-SHA256 from `database.encryption_key`, so a
//! copy of the database alone reveals no token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::secret::SecretString;

#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("sealed value cannot be opened (wrong database.encryption_key, or corrupt)")]
pub struct OpenError;

impl Sealer {
    pub fn new(key_material: &SecretString) -> Self {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"mxidp"), key_material.expose().as_bytes());
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        hk.expand(b"mxidp sealed upstream tokens v1", &mut key)
            .expect("32 bytes is a valid HKDF output length");
        Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// `v1.<base64url(nonce || ciphertext)>`
    pub fn seal(&self, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        format!("v1.{}", URL_SAFE_NO_PAD.encode(out))
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, OpenError> {
        let body = sealed.strip_prefix("v1.").ok_or(OpenError)?;
        let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| OpenError)?;
        if raw.len() < 24 {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = raw.split_at(24);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| OpenError)
    }

    pub fn seal_str(&self, plaintext: &str) -> String {
        self.seal(plaintext.as_bytes())
    }

    pub fn open_secret(&self, sealed: &str) -> Result<SecretString, OpenError> {
        String::from_utf8(self.open(sealed)?)
            .map(SecretString::new)
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_roundtrip_and_wrong_key_fails() {
        let a = Sealer::new(&SecretString::new("k".repeat(32)));
        let b = Sealer::new(&SecretString::new("x".repeat(32)));
        let sealed = a.seal_str("refresh-token-value");
        assert!(!sealed.contains("refresh-token-value"));
        assert_eq!(
            a.open_secret(&sealed).unwrap().expose(),
            "refresh-token-value"
        );
        assert!(b.open(&sealed).is_err());
        assert_ne!(a.seal_str("same"), a.seal_str("same"), "nonces must differ");
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        assert!(a.open(&tampered).is_err() || tampered == sealed);
    }
}
