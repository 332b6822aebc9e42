//! mxidp's own Matrix tokens (docs/token-model.md).
//!
//! A Matrix client never holds a token of the IdP: it holds an opaque token that only mxidp
//! can resolve, `mxidp_at_<random>_<checksum>` for access and `mxidp_rt_<random>_<checksum>` for
//! refresh. The prefix tells a secret scanner (and a person reading a leak report) what it
//! found; the CRC32 checksum lets mxidp refuse a mistyped, truncated or foreign token before any
//! lookup. The checksum is not a security measure (anyone can compute it): the 190 bits of
//! randomness are. Only the SHA-256 of a token is ever stored.

use rand::Rng;

use crate::secret::SecretString;
use crate::store::TokenKind;

const ACCESS_PREFIX: &str = "mxidp_at_";
const REFRESH_PREFIX: &str = "mxidp_rt_";
/// 32 base62 characters: log2(62) * 32 ≈ 190 bits.
const RANDOM_LEN: usize = 32;
/// A CRC32 fits in 6 base62 characters (62^6 > 2^32).
const CHECKSUM_LEN: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn prefix(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Access => ACCESS_PREFIX,
        TokenKind::Refresh => REFRESH_PREFIX,
    }
}

/// A new random token of this kind.
pub fn issue(kind: TokenKind) -> SecretString {
    // ThreadRng is a CSPRNG (ChaCha, seeded and periodically reseeded from the OS): one
    // getrandom call per token would cost more than the rest of issuing it.
    let mut rng = rand::thread_rng();
    let mut token = String::with_capacity(prefix(kind).len() + RANDOM_LEN + 1 + CHECKSUM_LEN);
    token.push_str(prefix(kind));
    for _ in 0..RANDOM_LEN {
        token.push(BASE62[rng.gen_range(0..BASE62.len())] as char);
    }
    let checksum = checksum(&token);
    token.push('_');
    token.push_str(&checksum);
    SecretString::new(token)
}

/// The kind of a well-formed mxidp token (prefix, length, alphabet and checksum all right);
/// `None` for anything else, which no lookup can make valid.
pub fn recognise(token: &str) -> Option<TokenKind> {
    let kind = if token.starts_with(ACCESS_PREFIX) {
        TokenKind::Access
    } else if token.starts_with(REFRESH_PREFIX) {
        TokenKind::Refresh
    } else {
        return None;
    };
    let body_len = prefix(kind).len() + RANDOM_LEN;
    if token.len() != body_len + 1 + CHECKSUM_LEN || token.as_bytes()[body_len] != b'_' {
        return None;
    }
    let (body, rest) = token.split_at(body_len);
    let random = &body[prefix(kind).len()..];
    if !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    (checksum(body) == rest[1..]).then_some(kind)
}

fn checksum(body: &str) -> String {
    let mut value = crc32fast::hash(body.as_bytes()) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    // Only base62 bytes were written.
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_are_recognised_with_their_kind() {
        for kind in [TokenKind::Access, TokenKind::Refresh] {
            let token = issue(kind);
            assert_eq!(recognise(token.expose()), Some(kind), "{}", token.expose());
            assert!(token.expose().starts_with(prefix(kind)));
        }
        assert_ne!(
            issue(TokenKind::Access).expose(),
            issue(TokenKind::Access).expose()
        );
    }

    #[test]
    fn a_changed_character_fails_the_checksum() {
        let token = issue(TokenKind::Access);
        let raw = token.expose();
        let position = ACCESS_PREFIX.len() + 3;
        let replaced = if raw.as_bytes()[position] == b'a' {
            'b'
        } else {
            'a'
        };
        let mut typo = raw.to_owned();
        typo.replace_range(position..position + 1, &replaced.to_string());
        assert_eq!(recognise(&typo), None);
    }

    #[test]
    fn foreign_and_malformed_tokens_are_not_recognised() {
        let good = issue(TokenKind::Refresh);
        let good = good.expose();
        for bad in [
            "",
            "eyJhbGciOiJSUzI1NiJ9.e30.sig",
            "syt_YWxpY2U_abcdefghijklmnopqrst_2yFqHg",
            &good[..good.len() - 1],
            &format!("{good}x"),
            &good.replace("mxidp_rt_", "mxidp_xx_"),
            &good.replace("mxidp_rt_", "mxidp_at_"),
        ] {
            assert_eq!(recognise(bad), None, "{bad}");
        }
    }
}
