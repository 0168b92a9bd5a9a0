//! API keys of claims systems: from settings, or generated once into the data dir.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A short, loggable fingerprint of an API key (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(pub String);

/// The accepted keys, held as SHA-256 hashes: a lookup by hash compares no secret byte by byte.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], KeyId>,
}

impl ApiKeys {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> Self {
        let by_hash = keys
            .into_iter()
            .filter(|k| !k.as_ref().trim().is_empty())
            .map(|k| {
                let h: [u8; 32] = Sha256::digest(k.as_ref().trim().as_bytes()).into();
                (h, KeyId(format!("key_{}", hex::encode(&h[..6]))))
            })
            .collect();
        Self { by_hash }
    }

    pub fn check(&self, presented: &str) -> Option<KeyId> {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.by_hash.get(&h).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
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

    #[test]
    fn keys_are_checked_by_hash() {
        let keys = ApiKeys::new(["alpha", " beta ", ""]);
        assert!(keys.check("alpha").is_some());
        assert!(keys.check("beta").is_some());
        assert!(keys.check("").is_none());
        assert!(keys.check("alph").is_none());
        assert_ne!(keys.check("alpha"), keys.check("beta"));
        assert!(!keys.check("alpha").unwrap().0.contains("alpha"));
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
