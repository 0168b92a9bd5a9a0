//! The service's database. SQLite's statements live below this module, PostgreSQL's in the crate
//! `capturelink-store-postgres` (named [`postgres`] here), each checked at compile time against
//! its own backend's schema (docs/SCALING.md, "Statements checked at compile time").
//!
//! One SQLite file in the data dir, in WAL mode with `synchronous=FULL`: a write that returned is on
//! disk. Writes go through a single connection (SQLite has one writer anyway, and a single writer
//! never waits on itself); reads use a small pool of their own, which WAL lets run beside the writer.
//! Event appends arriving together are batched into one transaction by [`events::Appender`]
//! (group commit), so one fsync serves many sessions.

pub use capturelink_store_types::{Result, StoreError};

pub mod admin;
pub mod api_keys;
pub mod captures;
pub mod cluster;
pub mod events;
pub use capturelink_store_postgres as postgres;
pub mod retention;
pub mod sessions;
pub mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use events::{Appender, EventRow};
pub use sessions::{NewSession, SessionRow, SessionStatus, SlotRow};

/// The service's database: the embedded SQLite file (the default) or a PostgreSQL server
/// (`--database-url postgres://…`; one node per database unless the nodes share a bus, see
/// [`Store::lock_for_node`]). Every method means the same on both; SQLite's SQL is in this
/// module's files, PostgreSQL's in the same-named modules of [`postgres`].
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    appender: Appender,
    /// Several nodes share the database (PostgreSQL only): events take their seq from the
    /// session's counter rows as they are written ([`Store::number_in_database`]).
    numbers_events: bool,
}

#[derive(Clone)]
enum Backend {
    /// Behind an Arc: every live room holds a clone of the store.
    Sqlite(Arc<Sqlite>),
    Postgres(Arc<Postgres>),
}

struct Postgres {
    pool: PgPool,
    /// The connection holding this node's lock on the database (see [`Store::lock_for_node`]).
    node_lock: tokio::sync::Mutex<NodeLock>,
}

#[derive(Default)]
enum NodeLock {
    /// Not asked for (an operator's command beside the service).
    #[default]
    None,
    Held(sqlx::PgConnection),
    /// The connection holding it was lost (the server restarted, or the connection was killed):
    /// taken again by the next readiness check, if no other node has taken it meanwhile.
    Lost,
}

struct Sqlite {
    write: SqlitePool,
    read: SqlitePool,
    /// For the readiness probe's own short-lived connection.
    probe_opts: SqliteConnectOptions,
}

/// Hands a method to the PostgreSQL store, or gives the SQLite pools to the rest of its body.
macro_rules! on_postgres {
    ($store:expr, |$pg:ident| $call:expr) => {
        match &$store.backend {
            $crate::store::Backend::Postgres(pg) => {
                let $pg = &pg.pool;
                return $call;
            }
            $crate::store::Backend::Sqlite(db) => db,
        }
    };
}
pub(crate) use on_postgres;

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
        let appender = Appender::start(events::Writer::Sqlite(write.clone()));
        Ok(Self {
            backend: Backend::Sqlite(Arc::new(Sqlite {
                write,
                read,
                probe_opts: opts.busy_timeout(Duration::from_millis(500)),
            })),
            appender,
            numbers_events: false,
        })
    }

    /// Connects to PostgreSQL (`postgres://…`) and runs its migrations (`migrations/postgres/`).
    pub async fn open_postgres(url: &str) -> Result<Self> {
        Self::open_postgres_with(url, postgres::DEFAULT_POOL).await
    }

    /// [`Store::open_postgres`] with at most `pool` connections (`--database-pool`).
    pub async fn open_postgres_with(url: &str, pool: u32) -> Result<Self> {
        let pool = postgres::connect(url, pool).await?;
        let appender = Appender::start(events::Writer::Postgres(pool.clone()));
        Ok(Self {
            backend: Backend::Postgres(Arc::new(Postgres {
                pool,
                node_lock: tokio::sync::Mutex::new(NodeLock::None),
            })),
            appender,
            numbers_events: false,
        })
    }

    /// Locks the database for this node, for as long as the store is open. A room numbers its
    /// events in this node's memory, so two nodes serving the same sessions would number them
    /// twice; until numbering moves into the database and nodes share live events over a bus,
    /// a second node on the same PostgreSQL database refuses to start. A no-op on SQLite, whose
    /// file the service already holds alone.
    pub async fn lock_for_node(&self) -> Result<()> {
        let Backend::Postgres(pg) = &self.backend else {
            return Ok(());
        };
        let mut lock = pg.node_lock.lock().await;
        if !matches!(*lock, NodeLock::Held(_)) {
            *lock = NodeLock::Held(postgres::lock_for_node(&pg.pool).await?);
        }
        Ok(())
    }

    /// On PostgreSQL, checks that the lock of a serving node still holds, and takes it again
    /// when its connection was lost. Fails with [`StoreError::LockedByAnotherNode`] when another
    /// node took it meanwhile: the readiness check then fails, and the load balancer stops
    /// sending here.
    async fn check_node_lock(&self) -> Result<()> {
        let Backend::Postgres(pg) = &self.backend else {
            return Ok(());
        };
        let mut lock = pg.node_lock.lock().await;
        if let NodeLock::Held(conn) = &mut *lock {
            use sqlx::Connection;
            if conn.ping().await.is_ok() {
                return Ok(());
            }
            tracing::warn!("the connection holding this node's lock on the database was lost");
            *lock = NodeLock::Lost;
        }
        if matches!(*lock, NodeLock::Lost) {
            *lock = NodeLock::Held(postgres::lock_for_node(&pg.pool).await?);
            tracing::info!("this node's lock on the database is held again");
        }
        Ok(())
    }

    /// The SQLite store in `data_dir`, or PostgreSQL when `database_url` is given (with at most
    /// `pool` connections).
    pub async fn open_configured(
        data_dir: &Path,
        database_url: Option<&str>,
        busy_timeout: Duration,
        pool: u32,
    ) -> Result<Self> {
        match database_url {
            Some(url) => Self::open_postgres_with(url, pool).await,
            None => Self::open_with(data_dir, busy_timeout).await,
        }
    }

    /// Which database this is, for the log.
    pub fn describe(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Can the database take a write now? Takes the write lock (`BEGIN IMMEDIATE`) on a
    /// connection of its own, so a slow answer never holds up the service's writer, and gives it
    /// back at once. Fails when another process holds the lock past a short wait, or the file
    /// cannot be written.
    pub async fn check_writable(&self) -> Result<()> {
        use sqlx::{ConnectOptions, Connection};
        self.check_node_lock().await?;
        let db = on_postgres!(self, |pg| postgres::check_writable(pg).await);
        let mut conn = db
            .probe_opts
            .connect()
            .await
            .map_err(StoreError::classify)?;
        let outcome = async {
            sqlx::query!("BEGIN IMMEDIATE").execute(&mut conn).await?;
            sqlx::query!("ROLLBACK").execute(&mut conn).await?;
            Ok::<_, sqlx::Error>(())
        }
        .await
        .map_err(StoreError::classify);
        let _ = conn.close().await;
        outcome
    }

    /// The SQLite writer, for unit tests that set up rows or read the connection's settings.
    #[cfg(test)]
    pub(crate) fn sqlite_writer(&self) -> &SqlitePool {
        match &self.backend {
            Backend::Sqlite(db) => &db.write,
            Backend::Postgres(_) => panic!("a SQLite store"),
        }
    }

    pub fn appender(&self) -> &Appender {
        &self.appender
    }

    pub async fn close(&self) {
        self.appender.flush().await;
        match &self.backend {
            Backend::Sqlite(db) => {
                db.write.close().await;
                db.read.close().await;
            }
            Backend::Postgres(pg) => {
                if let NodeLock::Held(conn) = std::mem::take(&mut *pg.node_lock.lock().await) {
                    use sqlx::Connection;
                    let _ = conn.close().await;
                }
                pg.pool.close().await;
            }
        }
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
