//! API keys on PostgreSQL.

use sqlx::postgres::PgPool;

use capturelink_store_types::api_keys::{ApiKeyRow, Revoked};
use capturelink_store_types::{Result, StoreError};

pub async fn insert_api_key(
    pool: &PgPool,
    name: Option<&str>,
    hash: &[u8],
    now: i64,
) -> Result<i64> {
    let id = sqlx::query_scalar!(
        "INSERT INTO api_keys (name, hash, created_at) VALUES ($1, $2, $3) RETURNING id",
        name,
        hash,
        now
    )
    .fetch_one(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(id)
}

pub async fn list_api_keys(pool: &PgPool) -> Result<Vec<ApiKeyRow>> {
    sqlx::query_as!(
        ApiKeyRow,
        // ASC: the same text as SQLite's statement would share its query data (scripts/sqlx-prepare).
        "SELECT id, name, hash, created_at, revoked_at, last_used_at FROM api_keys ORDER BY id ASC",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)
}

pub async fn revoke_api_key(pool: &PgPool, id: i64, now: i64) -> Result<Revoked> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    // FOR UPDATE: of two revokes racing for the key, the second waits here and then reads the
    // first one's `revoked_at` (Already), instead of both answering Now.
    let revoked_at = sqlx::query_scalar!(
        "SELECT revoked_at FROM api_keys WHERE id = $1 FOR UPDATE",
        id
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    let outcome = match revoked_at {
        None => Revoked::NotFound,
        Some(Some(at)) => Revoked::Already(at),
        Some(None) => {
            sqlx::query!("UPDATE api_keys SET revoked_at = $1 WHERE id = $2", now, id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::classify)?;
            Revoked::Now
        }
    };
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(outcome)
}

pub async fn live_api_key(pool: &PgPool, hash: &[u8]) -> Result<Option<i64>> {
    sqlx::query_scalar!(
        "SELECT id FROM api_keys WHERE hash = $1 AND revoked_at IS NULL",
        hash
    )
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)
}

pub async fn touch_api_key(pool: &PgPool, id: i64, now: i64) -> Result<()> {
    sqlx::query!(
        "UPDATE api_keys SET last_used_at = $1 WHERE id = $2",
        now,
        id
    )
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}
