//! The rows and errors CaptureLink's store shares between its two backends: the embedded SQLite
//! (its statements in the service's crate, `src/store/`) and PostgreSQL (`crates/store-postgres`).
//! Each backend's statements are checked at compile time against its own database, and sqlx checks
//! one database per crate; what both read and write lives here, below both.

pub mod api_keys;
pub mod captures;
pub mod events;
pub mod sessions;
pub mod webhooks;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer holds the database lock longer than `busy_timeout`: retry later.
    #[error("database busy: {0}")]
    Busy(String),
    /// Another node holds the PostgreSQL database (see `Store::lock_for_node`).
    #[error("another CaptureLink node is serving from this database")]
    LockedByAnotherNode,
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
    ///
    /// SQLite reports numeric result codes (5 BUSY, 6 LOCKED, 517 BUSY_SNAPSHOT, 13 FULL);
    /// PostgreSQL reports SQLSTATEs (40001 serialization failure, 40P01 deadlock, 55P03 lock not
    /// available, 53100 disk full, 53200 out of memory, class 08 connection failures, 57P0x
    /// a server shutting down or a connection killed, 55000 a database refusing connections).
    /// A PostgreSQL server that cannot be reached is "busy" too: the request may succeed once it
    /// is back.
    pub fn classify(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => StoreError::Busy(e.to_string()),
            sqlx::Error::Database(db)
                if matches!(
                    db.code().as_deref(),
                    Some(
                        "5" | "6"
                            | "517"
                            | "40001"
                            | "40P01"
                            | "55P03"
                            | "55000"
                            | "57P01"
                            | "57P02"
                            | "57P03"
                            | "53200"
                    )
                ) || db.code().is_some_and(|c| c.starts_with("08")) =>
            {
                StoreError::Busy(e.to_string())
            }
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("13" | "53100")) => {
                StoreError::Full(e.to_string())
            }
            _ => StoreError::Db(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Content a purged session's captures named: (sha256 hex, mime).
pub type PurgedContent = Vec<(String, String)>;

/// A migration recorded in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i64,
    pub description: String,
    /// Applied by this run (not before).
    pub now: bool,
}

/// A new connection's place as its session's participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Higher than every earlier connection of the role: the node holding one closes it (4008).
    pub epoch: i64,
    /// A connection of the role was there before (it is replaced).
    pub replaced: bool,
}
