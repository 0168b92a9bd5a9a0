//! Join tokens: one per session and role, opaque to clients, stored only as SHA-256 hashes.
//!
//! A token is `base64url(HMAC-SHA256(server secret, "join|" salt "|" role))`, with a random salt per
//! session: 256 bits that look random to anyone without the server secret. Deriving rather than
//! storing them lets an idempotent retry of a create, and `GET /sessions/{id}` for the claims system,
//! hand out the same links again while the database holds only hashes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Agent,
    Customer,
}

impl Role {
    pub const BOTH: [Role; 2] = [Role::Agent, Role::Customer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Customer => "customer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "agent" => Some(Role::Agent),
            "customer" => Some(Role::Customer),
            _ => None,
        }
    }

    pub fn peer(self) -> Self {
        match self {
            Role::Agent => Role::Customer,
            Role::Customer => Role::Agent,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone)]
pub struct TokenMinter {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenMinter(..)")
    }
}

impl TokenMinter {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    /// A fresh random salt for a new session (128 bits).
    pub fn new_salt() -> String {
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        URL_SAFE_NO_PAD.encode(b)
    }

    pub fn token(&self, salt: &str, role: Role) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"join|");
        mac.update(salt.as_bytes());
        mac.update(b"|");
        mac.update(role.as_str().as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

/// What the database keeps of a token.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_by_role_salt_and_secret() {
        let m = TokenMinter::new(b"secret".to_vec());
        let salt = TokenMinter::new_salt();
        let a = m.token(&salt, Role::Agent);
        assert_eq!(a, m.token(&salt, Role::Agent), "derivation is stable");
        assert_ne!(a, m.token(&salt, Role::Customer));
        assert_ne!(a, m.token(&TokenMinter::new_salt(), Role::Agent));
        assert_ne!(
            a,
            TokenMinter::new(b"other".to_vec()).token(&salt, Role::Agent)
        );
        assert_eq!(a.len(), 43, "256 bits, base64url without padding");
        assert_ne!(hash_token(&a), a.as_bytes());
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::BOTH {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(r.peer().peer(), r);
        }
        assert_eq!(Role::parse("admin"), None);
    }
}
