//! Identifiers parsed once at the edge, so that invalid values cannot travel inward.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("localpart is empty")]
    EmptyLocalpart,
    #[error("localpart contains characters outside [a-z0-9._=/+-]")]
    LocalpartChars,
    #[error("localpart is all digits (reserved for guest users)")]
    LocalpartAllDigits,
    #[error("localpart starts with '_' (reserved for application services)")]
    LocalpartUnderscore,
    #[error("the Matrix ID would be longer than 255 bytes")]
    LocalpartTooLong,
    #[error("device id is shorter than 10 characters")]
    DeviceIdTooShort,
    #[error("device id is longer than 255 characters")]
    DeviceIdTooLong,
    #[error("device id contains characters outside the RFC 6749 scope-token set")]
    DeviceIdChars,
}

/// A Matrix user localpart that Synapse accepts: `[a-z0-9._=/+-]+`, not all digits, not starting
/// with `_` (Synapse rejects it unless `allow_underscore_prefixed_localpart`).
/// The full-length check needs the server name, see [`Localpart::check_length`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Localpart(String);

impl Localpart {
    pub fn parse(value: &str) -> Result<Self, IdError> {
        if value.is_empty() {
            return Err(IdError::EmptyLocalpart);
        }
        if !value.bytes().all(is_localpart_byte) {
            return Err(IdError::LocalpartChars);
        }
        if value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::LocalpartAllDigits);
        }
        if value.starts_with('_') {
            return Err(IdError::LocalpartUnderscore);
        }
        // No server name is this short; the precise check is check_length.
        if value.len() > 252 {
            return Err(IdError::LocalpartTooLong);
        }
        Ok(Self(value.to_owned()))
    }

    /// `@localpart:server_name` must fit in 255 bytes (Matrix spec, "User Identifiers").
    pub fn check_length(&self, server_name: &str) -> Result<(), IdError> {
        if 1 + self.0.len() + 1 + server_name.len() > 255 {
            Err(IdError::LocalpartTooLong)
        } else {
            Ok(())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn user_id(&self, server_name: &str) -> String {
        format!("@{}:{}", self.0, server_name)
    }
}

pub(crate) fn is_localpart_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+')
}

impl fmt::Display for Localpart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Localpart {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Localpart::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An mxidp session's id: random, minted by mxidp (never from a request), stored and logged.
/// Its own type, so that a client id or a subject cannot be passed where a session is meant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// A new random session id.
    pub fn new() -> Self {
        Self(random_token(16))
    }

    /// A session id as stored (the store and the event log hand them back).
    pub fn from_stored(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for SessionId {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SessionId {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for SessionId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for SessionId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// A Matrix device id chosen by the client in its device scope. The spec requires RFC 6749
/// scope-token characters (`%x21 / %x23-5B / %x5D-7E`); we also require at least 10 characters,
/// as MAS does, so that guessable ids are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    pub const MIN_LEN: usize = 10;

    pub fn parse(value: &str) -> Result<Self, IdError> {
        if !value
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(IdError::DeviceIdChars);
        }
        if value.len() < Self::MIN_LEN {
            return Err(IdError::DeviceIdTooShort);
        }
        if value.len() > 255 {
            return Err(IdError::DeviceIdTooLong);
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DeviceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// SHA-256 of a token, the only form in which tokens are stored (docs/token-model.md).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to correlate in logs, and a hash is not the token.
        write!(f, "TokenHash({}…)", &self.to_hex()[..12])
    }
}

/// Random URL-safe string with `bytes` bytes of entropy (codes, ids, state, nonces).
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localpart_rules() {
        assert!(Localpart::parse("alice.smith").is_ok());
        assert!(Localpart::parse("a+b=c/d-e_f").is_ok());
        assert_eq!(Localpart::parse(""), Err(IdError::EmptyLocalpart));
        assert_eq!(Localpart::parse("Alice"), Err(IdError::LocalpartChars));
        assert_eq!(Localpart::parse("a@b"), Err(IdError::LocalpartChars));
        assert_eq!(Localpart::parse("12345"), Err(IdError::LocalpartAllDigits));
        assert_eq!(Localpart::parse("_bot"), Err(IdError::LocalpartUnderscore));
        let long = "a".repeat(250);
        let lp = Localpart::parse(&long).unwrap();
        assert_eq!(
            lp.check_length("example.org"),
            Err(IdError::LocalpartTooLong)
        );
        assert!(Localpart::parse("alice")
            .unwrap()
            .check_length("example.org")
            .is_ok());
    }

    #[test]
    fn device_id_rules() {
        assert!(DeviceId::parse("ABCDEFGHIJ").is_ok());
        assert!(DeviceId::parse("abc!#$[]^_~").is_ok());
        assert_eq!(DeviceId::parse("SHORT"), Err(IdError::DeviceIdTooShort));
        assert_eq!(
            DeviceId::parse("has space in it"),
            Err(IdError::DeviceIdChars)
        );
        assert_eq!(
            DeviceId::parse("quote\"inside1"),
            Err(IdError::DeviceIdChars)
        );
        assert_eq!(
            DeviceId::parse("backslash\\inside"),
            Err(IdError::DeviceIdChars)
        );
        assert_eq!(
            DeviceId::parse("ünicode-device"),
            Err(IdError::DeviceIdChars)
        );
    }

    #[test]
    fn token_hash_hex_roundtrip_and_debug_hides_most() {
        let h = TokenHash::of("secret-token");
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert!(!format!("{h:?}").contains("secret-token"));
        assert_eq!(format!("{h:?}").len(), "TokenHash(…)".len() + 12);
    }
}
