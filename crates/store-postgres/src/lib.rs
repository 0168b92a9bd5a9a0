//! The PostgreSQL store (`--database-url postgres://…`): the same operations as the SQLite store,
//! in PostgreSQL's SQL, for several nodes sharing one database.
//!
//! Each function here is the body of the service's `Store` method of the same name when the
//! store is on PostgreSQL; the types and the meaning of each operation are documented there. The
//! schema is `migrations/postgres/`, kept in step with the SQLite migrations one directory up.
//!
//! Every write that the SQLite store makes in one transaction is one transaction here too, at
//! PostgreSQL's default READ COMMITTED: the statements that must see a row as it is at commit
//! (a capture fulfilling a request, a session being ended) lock it with `FOR UPDATE` or change it
//! with a conditional `UPDATE`, so two nodes racing for the same row cannot both win.

pub mod api_keys;
pub mod captures;
pub mod cluster;
pub mod events;
pub mod retention;
pub mod sessions;
pub mod webhooks;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use capturelink_store_types::{Result, StoreError};

/// Connections per node unless configured (`--database-pool`): the appender's group commits,
/// REST reads and the sweepers share them (and, with several nodes, every relayed message).
pub const DEFAULT_POOL: u32 = 16;

/// Connects with at most `pool` connections and runs the migrations in `migrations/postgres/`.
pub async fn connect(url: &str, pool: u32) -> Result<PgPool> {
    let opts: PgConnectOptions = url.parse().map_err(StoreError::Db)?;
    let opts = opts.application_name("capturelink");
    // One connection first, for its own error: a pool that cannot connect only says it timed
    // out, where an operator starting the service needs "connection refused" or "no such
    // database".
    opts.connect()
        .await
        .map_err(StoreError::Db)?
        .close()
        .await
        .map_err(StoreError::Db)?;
    let pool = PgPoolOptions::new()
        .max_connections(pool.max(2))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(StoreError::classify)?;
    sqlx::migrate!("../../migrations/postgres")
        .run(&pool)
        .await?;
    Ok(pool)
}

/// `capturelink migrate --database-url …`: applies the migrations the database lacks and
/// returns every migration now recorded.
pub async fn migrate(url: &str) -> Result<Vec<capturelink_store_types::AppliedMigration>> {
    let opts: PgConnectOptions = url.parse().map_err(StoreError::Db)?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.application_name("capturelink migrate"))
        .await
        .map_err(StoreError::classify)?;
    let outcome = async {
        let before = recorded_migrations(&pool).await?;
        sqlx::migrate!("../../migrations/postgres")
            .run(&pool)
            .await?;
        let after = recorded_migrations(&pool).await?;
        Ok(after
            .into_iter()
            .map(
                |(version, description)| capturelink_store_types::AppliedMigration {
                    now: !before.iter().any(|(v, _)| *v == version),
                    version,
                    description,
                },
            )
            .collect())
    }
    .await;
    pool.close().await;
    outcome
}

async fn recorded_migrations(pool: &PgPool) -> Result<Vec<(i64, String)>> {
    let exists =
        sqlx::query_scalar!(r#"SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS "exists!""#)
            .fetch_one(pool)
            .await
            .map_err(StoreError::classify)?;
    if !exists {
        return Ok(Vec::new());
    }
    // Runtime, not a macro: sqlx's own table, which the database the macros check against lacks.
    sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .map_err(StoreError::classify)
}

/// The advisory lock a serving node holds on its database (an arbitrary constant: "CLNK").
const NODE_LOCK: i64 = 0x434c_4e4b;

/// Takes the node's lock on the database: a session-level advisory lock on a connection of its
/// own, outside the pool, held until that connection closes (or the node dies).
pub async fn lock_for_node(pool: &PgPool) -> Result<sqlx::PgConnection> {
    let mut conn = pool
        .connect_options()
        .connect()
        .await
        .map_err(StoreError::classify)?;
    let got = sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "locked!""#, NODE_LOCK)
        .fetch_one(&mut conn)
        .await
        .map_err(StoreError::classify)?;
    if got {
        Ok(conn)
    } else {
        let _ = conn.close().await;
        Err(StoreError::LockedByAnotherNode)
    }
}

/// Can the database take a write now? A write transaction that changes nothing, on a connection
/// of the pool, with a short statement timeout so that a stalled server answers "no" quickly.
pub async fn check_writable(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    sqlx::query!("SET LOCAL statement_timeout = 500")
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    // Fails on a read-only server (a standby, or one out of disk that was set read-only).
    sqlx::query_scalar!("SELECT txid_current()")
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    tx.rollback().await.map_err(StoreError::classify)
}
