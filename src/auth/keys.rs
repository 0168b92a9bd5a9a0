//! API keys of claims systems: from settings, generated once into the data dir, or created with
//! `capturelink api-key create` and kept (hashed) in the database.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, now_ms};

/// A short, loggable fingerprint of an API key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(pub String);

/// Every generated key starts so; only such keys are looked up in the database.
pub const KEY_PREFIX: &str = "clk_";

/// `last_used_at` of a database key is written at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The fingerprint of the key with this SHA-256: `key_` and its first 6 bytes in hex.
pub fn fingerprint(hash: &[u8]) -> KeyId {
    KeyId(format!("key_{}", hex::encode(&hash[..hash.len().min(6)])))
}

/// A new API key (`clk_` and 256 random bits) and its SHA-256, the only part that is stored.
pub fn generate_api_key() -> (String, [u8; 32]) {
    let key = random_secret(KEY_PREFIX);
    let hash = sha256(&key);
    (key, hash)
}

/// The accepted keys. Those from settings and the key file are held as SHA-256 hashes, so a
/// lookup by hash compares no secret byte by byte; those in the database are looked up there on
/// every request (one indexed read), so a revoke made by `capturelink api-key revoke` in another
/// process takes effect at once, with no cache to wait out.
#[derive(Clone, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], KeyId>,
    db: Option<DbKeys>,
}

#[derive(Clone)]
struct DbKeys {
    store: Store,
    /// When each key's `last_used_at` was last written, by key id.
    touched: Arc<Mutex<HashMap<i64, Instant>>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("configured", &self.by_hash.len())
            .field("database", &self.db.is_some())
            .finish()
    }
}

impl ApiKeys {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> Self {
        let by_hash = keys
            .into_iter()
            .filter(|k| !k.as_ref().trim().is_empty())
            .map(|k| {
                let h = sha256(k.as_ref().trim());
                (h, fingerprint(&h))
            })
            .collect();
        Self { by_hash, db: None }
    }

    /// Also accepts the live keys in `store`'s `api_keys` table.
    pub fn with_store(mut self, store: Store) -> Self {
        self.db = Some(DbKeys {
            store,
            touched: Arc::default(),
        });
        self
    }

    /// The key's fingerprint if it is accepted; an error only if the database could not answer.
    pub async fn check(&self, presented: &str) -> Result<Option<KeyId>, StoreError> {
        let h = sha256(presented);
        if let Some(k) = self.by_hash.get(&h) {
            return Ok(Some(k.clone()));
        }
        let Some(db) = &self.db else {
            return Ok(None);
        };
        if !presented.starts_with(KEY_PREFIX) {
            // Join tokens and other credentials cost no database read here.
            return Ok(None);
        }
        match db.store.live_api_key(&h).await? {
            Some(id) => {
                db.touch(id);
                Ok(Some(fingerprint(&h)))
            }
            None => Ok(None),
        }
    }

    /// No key is configured (database keys are not counted).
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

impl DbKeys {
    /// Records the key's use, at most once per [`TOUCH_EVERY`], off the request's path.
    fn touch(&self, id: i64) {
        let now = Instant::now();
        {
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            if touched
                .get(&id)
                .is_some_and(|last| now.duration_since(*last) < TOUCH_EVERY)
            {
                return;
            }
            touched.insert(id, now);
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(id, now_ms()).await {
                tracing::debug!(error = %e, "could not record an API key's last use");
            }
        });
    }
}

pub const API_KEY_FILE: &str = "api-key";
pub const SECRET_FILE: &str = "secret";

/// A random 256-bit value, base64url, after `prefix`.
pub fn random_secret(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

/// Reads a secret kept in the data dir, or creates it with `generate` (owner-only permissions).
/// Returns the value and whether it was created just now.
pub fn load_or_create(
    dir: &Path,
    name: &str,
    generate: impl FnOnce() -> String,
) -> std::io::Result<(String, bool)> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let value = generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts.open(&path)?;
    f.write_all(value.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok((value, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_checked_by_hash() {
        let keys = ApiKeys::new(["alpha", " beta ", ""]);
        let check = |k: &'static str| {
            let keys = keys.clone();
            async move { keys.check(k).await.unwrap() }
        };
        assert!(check("alpha").await.is_some());
        assert!(check("beta").await.is_some());
        assert!(check("").await.is_none());
        assert!(check("alph").await.is_none());
        assert_ne!(check("alpha").await, check("beta").await);
        assert!(!check("alpha").await.unwrap().0.contains("alpha"));
    }

    #[tokio::test]
    async fn database_keys_are_accepted_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let keys = ApiKeys::new(["configured"]).with_store(store.clone());
        let (key, hash) = generate_api_key();
        assert!(key.starts_with(KEY_PREFIX) && key.len() >= 4 + 43);
        assert!(keys.check(&key).await.unwrap().is_none());
        let id = store
            .insert_api_key(Some("a"), &hash, now_ms())
            .await
            .unwrap();
        assert_eq!(keys.check(&key).await.unwrap(), Some(fingerprint(&hash)));
        assert!(keys.check("configured").await.unwrap().is_some());
        store.revoke_api_key(id, now_ms()).await.unwrap();
        assert!(keys.check(&key).await.unwrap().is_none());
        store.close().await;
    }

    #[test]
    fn generated_secret_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) =
            load_or_create(dir.path(), API_KEY_FILE, || random_secret("clk_")).unwrap();
        assert!(created && a.starts_with("clk_") && a.len() > 40);
        let (b, created) =
            load_or_create(dir.path(), API_KEY_FILE, || random_secret("clk_")).unwrap();
        assert!(!created);
        assert_eq!(a, b);
    }
}
