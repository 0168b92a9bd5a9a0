//! Every SQL statement of the service lives below this module.
//!
//! One SQLite file in the data dir, in WAL mode with `synchronous=FULL`: a write that returned is on
//! disk. Writes go through a single connection (SQLite has one writer anyway, and a single writer
//! never waits on itself); reads use a small pool of their own, which WAL lets run beside the writer.
//! Event appends arriving together are batched into one transaction by [`events::Appender`]
//! (group commit), so one fsync serves many sessions.

pub mod admin;
pub mod api_keys;
pub mod captures;
pub mod events;
pub mod retention;
pub mod sessions;
pub mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
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
    /// The disk holding the database is full (SQLITE_FULL): retry once space is freed.
    #[error("database disk full: {0}")]
    Full(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the event writer has stopped")]
    WriterGone,
    /// The capture request a capture was to fulfil is fulfilled already (or unknown).
    #[error("the capture request is already fulfilled")]
    RequestFulfilled,
    /// The session's captures were deleted by the retention policy (the session row remains).
    #[error("the session's data was purged by the retention policy")]
    Purged,
}

impl StoreError {
    /// Sorts a sqlx error into "busy, try again", "disk full" and the rest.
    pub(crate) fn classify(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut => StoreError::Busy(e.to_string()),
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("5") | Some("6") | Some("517")) =>
            {
                StoreError::Busy(e.to_string())
            }
            sqlx::Error::Database(db) if db.code().as_deref() == Some("13") => {
                StoreError::Full(e.to_string())
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
    /// For the readiness probe's own short-lived connection. Behind an Arc: the options are a few
    /// hundred bytes and a map, and every live room holds a clone of the store.
    probe_opts: Arc<SqliteConnectOptions>,
}

pub const DB_FILE: &str = "capturelink.db";
/// How long a write waits for a lock held elsewhere, unless configured otherwise.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and runs the embedded migrations.
    pub async fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with(data_dir, DEFAULT_BUSY_TIMEOUT).await
    }

    /// [`Store::open`] with how long a write waits for another process's lock before it fails
    /// with [`StoreError::Busy`] (`--db-busy-timeout-ms`).
    pub async fn open_with(data_dir: &Path, busy_timeout: Duration) -> Result<Self> {
        let path = data_dir.join(DB_FILE);
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(busy_timeout);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .after_release(|conn, _| Box::pin(release_writer(conn)))
            .connect_with(opts.clone())
            .await
            .map_err(StoreError::classify)?;
        sqlx::migrate!("./migrations").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone().read_only(true))
            .await
            .map_err(StoreError::classify)?;
        let appender = Appender::start(write.clone());
        Ok(Self {
            write,
            read,
            appender,
            probe_opts: Arc::new(opts.busy_timeout(Duration::from_millis(500))),
        })
    }

    /// Can the database take a write now? Takes the write lock (`BEGIN IMMEDIATE`) on a
    /// connection of its own, so a slow answer never holds up the service's writer, and gives it
    /// back at once. Fails when another process holds the lock past a short wait, or the file
    /// cannot be written.
    pub async fn check_writable(&self) -> Result<()> {
        use sqlx::{ConnectOptions, Connection};
        let mut conn = self
            .probe_opts
            .connect()
            .await
            .map_err(StoreError::classify)?;
        let outcome = async {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await?;
            sqlx::query("ROLLBACK").execute(&mut conn).await?;
            Ok::<_, sqlx::Error>(())
        }
        .await
        .map_err(StoreError::classify);
        let _ = conn.close().await;
        outcome
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

/// Keeps the writer connection only if no transaction is left open on it.
///
/// When a COMMIT fails with SQLITE_FULL (a full disk), SQLite keeps the transaction open, and the
/// rollback sqlx queues on drop does not always end it: the connection then goes back to the pool
/// inside a transaction, every later `BEGIN` becomes a savepoint within it, and each "commit"
/// answers OK without anything reaching the disk (acknowledged captures lost on restart, seen in
/// tests/it/faults.rs). Such a connection is closed here instead; the pool opens a fresh one.
async fn release_writer(
    conn: &mut sqlx::SqliteConnection,
) -> std::result::Result<bool, sqlx::Error> {
    use sqlx::Connection;
    // A commit that succeeded has left no transaction (sqlx counts them on SQLite's thread, before
    // it answers): the common case costs no round trip.
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    // Waits for what is queued on the connection (the rollback of a dropped transaction).
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!("closing the database writer left inside a failed transaction");
        return Ok(false);
    }
    Ok(true)
}

/// Milliseconds since the Unix epoch, the unit of every stored time.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
