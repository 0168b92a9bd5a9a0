//! Retention on PostgreSQL.

use sqlx::postgres::PgPool;

use capturelink_store_types::PurgedContent;
use capturelink_store_types::{Result, StoreError};

pub async fn due_purges(pool: &PgPool, cutoff: i64, limit: u32) -> Result<Vec<String>> {
    // The expression matches the partial index `sessions_retention`.
    sqlx::query_scalar!(
        "SELECT id FROM sessions \
         WHERE purged_at IS NULL AND COALESCE(closed_at, expires_at) <= $1 \
         ORDER BY COALESCE(closed_at, expires_at) LIMIT $2",
        cutoff,
        i64::from(limit)
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)
}

pub async fn purge_session(pool: &PgPool, id: &str, now: i64) -> Result<Option<PurgedContent>> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    // Conditional UPDATE: of two nodes purging the session, one marks it and the other, after
    // waiting for the row lock, sees `purged_at` set and stops. The lock on the session row is
    // held until commit.
    let marked = sqlx::query!(
        "UPDATE sessions SET purged_at = $1 WHERE id = $2 AND purged_at IS NULL \
         AND (status IN ('closed', 'expired') OR expires_at <= $1)",
        now,
        id
    )
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    if marked.rows_affected() != 1 {
        return Ok(None);
    }
    // The content is read from the rows this statement deletes (not from an earlier SELECT), so
    // a capture committed in between by another node cannot be deleted without being reported.
    let content: PurgedContent = sqlx::query!(
        r#"WITH gone AS (DELETE FROM captures WHERE session_id = $1 RETURNING sha256, mime)
         SELECT DISTINCT sha256 AS "sha256!", mime AS "mime!" FROM gone"#,
        id
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(StoreError::classify)?
    .into_iter()
    .map(|r| (r.sha256, r.mime))
    .collect();
    sqlx::query!("DELETE FROM capture_requests WHERE session_id = $1", id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    sqlx::query!(
        "UPDATE checklist_slots SET capture_id = NULL WHERE session_id = $1",
        id
    )
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    sqlx::query!("DELETE FROM events WHERE session_id = $1", id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    sqlx::query!("DELETE FROM webhook_outbox WHERE session_id = $1", id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(Some(content))
}

pub async fn purged_at(pool: &PgPool, session_id: &str) -> Result<Option<i64>> {
    let at: Option<Option<i64>> =
        sqlx::query_scalar!("SELECT purged_at FROM sessions WHERE id = $1", session_id)
            .fetch_optional(pool)
            .await
            .map_err(StoreError::classify)?;
    Ok(at.flatten())
}
