//! Every SQL statement of the service lives below this module.
//!
//! One SQLite file in the data dir, in WAL mode with `synchronous=FULL`: a write that returned is on
//! disk. Writes go through a single connection (SQLite has one writer anyway, and a single writer
//! never waits on itself); reads use a small pool of their own, which WAL lets run beside the writer.
//! Event appends arriving together are batched into one transaction by [`events::Appender`]
//! (group commit), so one fsync serves many sessions.

pub mod captures;
pub mod events;
pub mod sessions;
pub mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use events::{Appender, EventRow};
pub use sessions::{NewSession, SessionRow, SessionStatus, SlotRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer holds the database lock longer than `busy_timeout`: retry later.
    #[error("database busy: {0}")]
    Busy(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the event writer has stopped")]
    WriterGone,
    /// The capture request a capture was to fulfil is fulfilled already (or unknown).
    #[error("the capture request is already fulfilled")]
    RequestFulfilled,
}

impl StoreError {
    /// Sorts a sqlx error into "busy, try again" and the rest.
    pub(crate) fn classify(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut => StoreError::Busy(e.to_string()),
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("5") | Some("6") | Some("517")) =>
            {
                StoreError::Busy(e.to_string())
            }
            _ => StoreError::Db(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    write: SqlitePool,
    read: SqlitePool,
    appender: Appender,
}

pub const DB_FILE: &str = "capturelink.db";

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and runs the embedded migrations.
    pub async fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(DB_FILE);
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await
            .map_err(StoreError::classify)?;
        sqlx::migrate!("./migrations").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.read_only(true))
            .await
            .map_err(StoreError::classify)?;
        let appender = Appender::start(write.clone());
        Ok(Self {
            write,
            read,
            appender,
        })
    }

    pub fn appender(&self) -> &Appender {
        &self.appender
    }

    pub async fn close(&self) {
        self.appender.flush().await;
        self.write.close().await;
        self.read.close().await;
    }
}

/// Milliseconds since the Unix epoch, the unit of every stored time.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
