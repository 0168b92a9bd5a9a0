//! `capturelink api-key create|list|revoke`: keys kept as SHA-256 hashes in the database, which
//! the running service reads on each request (so a revoke takes effect at once).

use anyhow::Context;

use crate::auth::{fingerprint, generate_api_key};
use crate::config::{ApiKeyCommand, DataDirArg};
use crate::session::view::rfc3339;
use crate::store::api_keys::Revoked;
use crate::store::{Store, now_ms};

pub async fn run(command: ApiKeyCommand) -> anyhow::Result<()> {
    match command {
        ApiKeyCommand::Create { name, dir } => {
            // Creating a key before the first start is fine: the database is created here.
            if dir.database_url.is_none() {
                std::fs::create_dir_all(&dir.data_dir)
                    .with_context(|| format!("creating data dir {}", dir.data_dir.display()))?;
            }
            let store = open(&dir).await?;
            let (key, hash) = generate_api_key();
            let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
            let id = store.insert_api_key(name.as_deref(), &hash, now_ms()).await;
            store.close().await;
            let id = id.context("storing the key")?;
            println!("{key}");
            eprintln!(
                "created API key {id}{} ({}); it is shown this once, only its hash is kept",
                name.map(|n| format!(" \"{n}\"")).unwrap_or_default(),
                fingerprint(&hash).0,
            );
            Ok(())
        }
        ApiKeyCommand::List { dir } => {
            if dir.database_url.is_none() {
                super::require_database(&dir.data_dir)?;
            }
            let store = open(&dir).await?;
            let keys = store.list_api_keys().await;
            store.close().await;
            let keys = keys.context("reading the keys")?;
            println!(
                "{:<5} {:<24} {:<16} {:<20} {:<20} REVOKED",
                "ID", "NAME", "FINGERPRINT", "CREATED", "LAST USED"
            );
            let time = |ms: Option<i64>| ms.map(rfc3339).unwrap_or_else(|| "-".into());
            for k in keys {
                println!(
                    "{:<5} {:<24} {:<16} {:<20} {:<20} {}",
                    k.id,
                    k.name.as_deref().unwrap_or("-"),
                    fingerprint(&k.hash).0,
                    rfc3339(k.created_at),
                    time(k.last_used_at),
                    time(k.revoked_at),
                );
            }
            Ok(())
        }
        ApiKeyCommand::Revoke { id, dir } => {
            if dir.database_url.is_none() {
                super::require_database(&dir.data_dir)?;
            }
            let store = open(&dir).await?;
            let outcome = store.revoke_api_key(id, now_ms()).await;
            store.close().await;
            match outcome.context("revoking the key")? {
                Revoked::Now => {
                    eprintln!("revoked API key {id}");
                    Ok(())
                }
                Revoked::Already(at) => {
                    eprintln!("API key {id} was already revoked at {}", rfc3339(at));
                    Ok(())
                }
                Revoked::NotFound => anyhow::bail!("no API key with id {id}"),
            }
        }
    }
}

async fn open(dir: &DataDirArg) -> anyhow::Result<Store> {
    match &dir.database_url {
        Some(url) => Store::open_postgres(url)
            .await
            .context("opening the PostgreSQL database"),
        None => Store::open(&dir.data_dir)
            .await
            .with_context(|| format!("opening the database in {}", dir.data_dir.display())),
    }
}
