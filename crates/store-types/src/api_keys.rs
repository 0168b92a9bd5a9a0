//! API keys: only their SHA-256 is stored.

/// One stored key, as `api-key list` shows it (there is no way to get the key back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub id: i64,
    pub name: Option<String>,
    /// SHA-256 of the key.
    pub hash: Vec<u8>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// What `revoke_api_key` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Now,
    /// Revoked before, at this time; nothing changed.
    Already(i64),
    NotFound,
}
