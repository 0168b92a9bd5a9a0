//! The database as the operator's commands see it: `migrate`, the online snapshot `backup` takes
//! with `VACUUM INTO`, and the checks `restore` makes. None of these start the event writer.

pub use capturelink_store_types::AppliedMigration;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{DB_FILE, Result, StoreError};

/// The options the service opens its database with (see [`super::Store::open`]).
fn service_options(db: &Path) -> Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str("sqlite:")?
        .filename(db)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5)))
}

async fn one_connection(opts: SqliteConnectOptions) -> Result<SqlitePool> {
    SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(StoreError::classify)
}

async fn recorded_migrations(pool: &SqlitePool) -> Result<Vec<(i64, String)>> {
    let exists: Option<String> = sqlx::query_scalar!(
        r#"SELECT name AS "name!" FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"#
    )
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    // Runtime-checked: sqlx's own bookkeeping table, which sqlx creates as it migrates; it is no
    // part of migrations/, so the schema the query macros check against lacks it.
    let rows = sqlx::query(
        "SELECT version, description FROM _sqlx_migrations WHERE success = 1 ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Creates the database in `data_dir` if needed and applies the embedded migrations it lacks.
/// Returns every migration now recorded.
pub async fn migrate(data_dir: &Path) -> Result<Vec<AppliedMigration>> {
    let pool =
        one_connection(service_options(&data_dir.join(DB_FILE))?.create_if_missing(true)).await?;
    let outcome = async {
        let before = recorded_migrations(&pool).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let after = recorded_migrations(&pool).await?;
        Ok(after
            .into_iter()
            .map(|(version, description)| AppliedMigration {
                now: !before.iter().any(|(v, _)| *v == version),
                version,
                description,
            })
            .collect())
    }
    .await;
    pool.close().await;
    outcome
}

/// The live database of a data dir, opened beside a running service (which may be writing).
pub struct LiveDb {
    pool: SqlitePool,
}

impl LiveDb {
    /// Opens the existing database in `data_dir`; fails if there is none.
    pub async fn open(data_dir: &Path) -> Result<Self> {
        let opts = service_options(&data_dir.join(DB_FILE))?.create_if_missing(false);
        Ok(Self {
            pool: one_connection(opts).await?,
        })
    }

    /// Writes a consistent copy of the database to `dest` (which must not exist). `VACUUM INTO`
    /// reads inside one transaction, so it sees one committed state while the service goes on
    /// writing through WAL. The copy is in rollback-journal mode: one self-contained file.
    pub async fn vacuum_into(&self, dest: &Path) -> Result<()> {
        let dest = dest.to_str().ok_or_else(|| {
            StoreError::Db(sqlx::Error::Configuration(
                "the snapshot path is not valid UTF-8".into(),
            ))
        })?;
        sqlx::query!("VACUUM INTO ?", dest)
            .execute(&self.pool)
            .await
            .map_err(StoreError::classify)?;
        Ok(())
    }

    /// Is this content named by any capture now?
    pub async fn hash_in_use(&self, sha256: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar!("SELECT COUNT(*) FROM captures WHERE sha256 = ?", sha256)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::classify)?;
        Ok(n > 0)
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}

/// What a database file holds, as a backup's manifest records it.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    /// Content the captures name: (sha256 hex, mime), each once.
    pub content: Vec<(String, String)>,
    pub sessions: i64,
    pub captures: i64,
    pub migrations: Vec<i64>,
}

/// Reads a standalone database file (a snapshot, or a restored copy): what it holds, after an
/// integrity check. Fails if the check finds damage.
pub async fn inspect(db: &Path) -> Result<Contents> {
    let opts = SqliteConnectOptions::from_str("sqlite:")?
        .filename(db)
        .create_if_missing(false)
        .journal_mode(SqliteJournalMode::Delete);
    let pool = one_connection(opts).await?;
    let outcome = async {
        // The first line of the report: "ok", or the first problem found.
        let check = sqlx::query_scalar!("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .map_err(StoreError::classify)?
            .unwrap_or_default();
        if check != "ok" {
            return Err(StoreError::Db(sqlx::Error::Protocol(format!(
                "integrity check failed: {check}"
            ))));
        }
        let content = sqlx::query!("SELECT DISTINCT sha256, mime FROM captures ORDER BY sha256")
            .fetch_all(&pool)
            .await
            .map_err(StoreError::classify)?
            .into_iter()
            .map(|r| (r.sha256, r.mime))
            .collect();
        let sessions: i64 = sqlx::query_scalar!("SELECT COUNT(*) FROM sessions")
            .fetch_one(&pool)
            .await
            .map_err(StoreError::classify)?;
        let captures: i64 = sqlx::query_scalar!("SELECT COUNT(*) FROM captures")
            .fetch_one(&pool)
            .await
            .map_err(StoreError::classify)?;
        let migrations = recorded_migrations(&pool)
            .await?
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        Ok(Contents {
            content,
            sessions,
            captures,
            migrations,
        })
    }
    .await;
    pool.close().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn migrate_reports_what_it_applied() {
        let dir = tempfile::tempdir().unwrap();
        let first = migrate(dir.path()).await.unwrap();
        assert!(first.len() >= 4 && first.iter().all(|m| m.now), "{first:?}");
        assert_eq!(first[0].version, 1);
        let again = migrate(dir.path()).await.unwrap();
        assert_eq!(again.len(), first.len());
        assert!(again.iter().all(|m| !m.now));
    }

    #[tokio::test]
    async fn a_snapshot_is_a_standalone_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(dir.path()).await.unwrap();
        store.insert_api_key(None, &[1u8; 32], 5).await.unwrap();
        let live = LiveDb::open(dir.path()).await.unwrap();
        let snap = dir.path().join("snap.db");
        live.vacuum_into(&snap).await.unwrap();
        live.close().await;
        store.close().await;
        let c = inspect(&snap).await.unwrap();
        assert_eq!((c.sessions, c.captures), (0, 0));
        assert!(c.migrations.contains(&3));
        assert!(!dir.path().join("snap.db-wal").exists());
    }

    #[tokio::test]
    async fn a_missing_database_is_not_created_by_backup() {
        let dir = tempfile::tempdir().unwrap();
        assert!(LiveDb::open(dir.path()).await.is_err());
        assert!(!dir.path().join(DB_FILE).exists());
    }
}
