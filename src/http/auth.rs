//! Who is asking: customer tokens signed by the server (HMAC-SHA256 over the customer id and an
//! expiry), and the admin token from configuration.
//!
//! A token is `<payload>.<signature>`, both base64url: the payload is `{"sub", "exp"}`. Changing
//! a byte of either makes it invalid; a token past its expiry is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::domain::shop::CustomerId;

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks customer tokens.
#[derive(Clone)]
pub struct Tokens {
    key: Vec<u8>,
    ttl_seconds: i64,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of ours.
    #[error("malformed token")]
    Malformed,
    /// Altered, or signed with another key.
    #[error("invalid signature")]
    Forged,
    /// Past its expiry.
    #[error("expired token")]
    Expired,
}

impl Tokens {
    /// Tokens signed with `key`, living `ttl_seconds`.
    pub fn new(key: &[u8], ttl_seconds: u64) -> Self {
        Self {
            key: key.to_vec(),
            ttl_seconds: i64::try_from(ttl_seconds).unwrap_or(i64::MAX / 2),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length; this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
    }

    /// A token for `customer`, issued at `now` (seconds since the epoch).
    pub fn issue(&self, customer: &CustomerId, now: i64) -> String {
        let claims = Claims {
            sub: customer.to_string(),
            exp: now.saturating_add(self.ttl_seconds),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{payload}.{signature}")
    }

    /// The customer a token names, if it is ours and alive at `now`.
    pub fn verify(&self, token: &str, now: i64) -> Result<CustomerId, TokenError> {
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Forged)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        CustomerId::parse(claims.sub).map_err(|_| TokenError::Malformed)
    }
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> CustomerId {
        CustomerId::parse("alice").unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn a_token_names_its_customer_until_it_expires() {
        let tokens = Tokens::new(b"secret", 60);
        let token = tokens.issue(&alice(), 1_000);
        assert_eq!(tokens.verify(&token, 1_059), Ok(alice()));
        assert_eq!(tokens.verify(&token, 1_060), Err(TokenError::Expired));
    }

    #[test]
    fn an_altered_or_foreign_token_is_refused() {
        let tokens = Tokens::new(b"secret", 60);
        let token = tokens.issue(&alice(), 1_000);
        let other = Tokens::new(b"another secret", 60).issue(&alice(), 1_000);
        assert_eq!(tokens.verify(&other, 1_000), Err(TokenError::Forged));
        let (payload, signature) = token.split_once('.').unwrap_or_default();
        let bob = URL_SAFE_NO_PAD.encode(br#"{"sub":"bob","exp":99999999999}"#);
        assert_eq!(
            tokens.verify(&format!("{bob}.{signature}"), 1_000),
            Err(TokenError::Forged)
        );
        assert_eq!(tokens.verify(payload, 1_000), Err(TokenError::Malformed));
        assert_eq!(tokens.verify("", 1_000), Err(TokenError::Malformed));
        assert_eq!(tokens.verify("a.b.c", 1_000), Err(TokenError::Malformed));
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
