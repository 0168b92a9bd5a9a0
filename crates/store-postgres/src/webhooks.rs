//! The webhook outbox on PostgreSQL.

use sqlx::{PgPool, Postgres};

use capturelink_store_types::webhooks::{DueWebhook, OutboxRow, OutboxState};
use capturelink_store_types::{Result, StoreError};

/// Writes one delivery inside the caller's transaction (see the SQLite store's
/// `enqueue_webhook`): `disabled` for an endpoint that answered 410 before, else `pending`.
pub async fn enqueue_webhook(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    row: &OutboxRow,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO webhook_outbox (id, session_id, url, event_type, payload, created_at, \
         next_attempt_at, status) VALUES ($1, $2, $3, $4, $5, $6, $6, \
         CASE WHEN EXISTS (SELECT 1 FROM webhook_disabled WHERE url = $3) \
         THEN 'disabled' ELSE 'pending' END)",
        row.id,
        row.session_id,
        row.url,
        row.event_type,
        row.payload,
        row.created_at
    )
    .execute(&mut **tx)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

pub async fn enqueue_webhooks(pool: &PgPool, rows: &[OutboxRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    for row in rows {
        enqueue_webhook(&mut tx, row).await?;
    }
    tx.commit().await.map_err(StoreError::classify)
}

/// A plain read, as on SQLite: dispatchers on several nodes may pick the same row and send it
/// twice (delivery is at-least-once, with a stable `webhook-id`).
pub async fn due_webhooks(pool: &PgPool, now: i64, limit: u32) -> Result<Vec<DueWebhook>> {
    sqlx::query_as!(
        DueWebhook,
        "SELECT id, session_id, url, event_type, payload, created_at, attempts \
         FROM webhook_outbox WHERE status = 'pending' AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at, id LIMIT $2",
        now,
        i64::from(limit)
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)
}

/// Several nodes: takes up to `limit` due rows for this node, moving each one's next attempt to
/// `now + lease`, so another node skips them (`SKIP LOCKED`: nodes never wait on each other's
/// claims). The delivery's outcome sets the row's real next attempt; a node that dies holding a
/// row leaves it to be taken again when the lease runs out (at least once, same `webhook-id`).
pub async fn claim_webhooks(
    pool: &PgPool,
    now: i64,
    limit: u32,
    lease_ms: i64,
) -> Result<Vec<DueWebhook>> {
    let mut due = sqlx::query_as!(
        DueWebhook,
        "UPDATE webhook_outbox SET next_attempt_at = $1 + $3 WHERE id IN \
         (SELECT id FROM webhook_outbox WHERE status = 'pending' AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING id, session_id, url, event_type, payload, created_at, attempts",
        now,
        i64::from(limit),
        lease_ms
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    due.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(due)
}

pub async fn next_webhook_due(pool: &PgPool, after: i64) -> Result<Option<i64>> {
    sqlx::query_scalar!(
        "SELECT MIN(next_attempt_at) FROM webhook_outbox \
         WHERE status = 'pending' AND next_attempt_at > $1",
        after
    )
    .fetch_one(pool)
    .await
    .map_err(StoreError::classify)
}

pub async fn mark_delivered(
    pool: &PgPool,
    id: &str,
    now: i64,
    attempts: i64,
    status: u16,
) -> Result<()> {
    sqlx::query!(
        "UPDATE webhook_outbox SET status = 'delivered', delivered_at = $1, attempts = $2, \
         last_status = $3, last_error = NULL WHERE id = $4",
        now,
        attempts,
        i64::from(status),
        id
    )
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

pub async fn mark_retry(
    pool: &PgPool,
    id: &str,
    next_attempt_at: i64,
    attempts: i64,
    status: Option<u16>,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE webhook_outbox SET next_attempt_at = $1, attempts = $2, last_status = $3, \
         last_error = $4 WHERE id = $5 AND status = 'pending'",
        next_attempt_at,
        attempts,
        status.map(i64::from),
        error,
        id
    )
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

pub async fn mark_failed(
    pool: &PgPool,
    id: &str,
    attempts: i64,
    status: Option<u16>,
    error: Option<&str>,
) -> Result<()> {
    sqlx::query!(
        "UPDATE webhook_outbox SET status = 'failed', attempts = $1, last_status = $2, \
         last_error = $3 WHERE id = $4 AND status = 'pending'",
        attempts,
        status.map(i64::from),
        error,
        id
    )
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

pub async fn disable_endpoint(pool: &PgPool, url: &str, now: i64) -> Result<u64> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    sqlx::query!(
        "INSERT INTO webhook_disabled (url, disabled_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        url,
        now
    )
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    let dropped = sqlx::query!(
        "UPDATE webhook_outbox SET status = 'disabled' WHERE url = $1 AND status = 'pending'",
        url
    )
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(dropped.rows_affected())
}

pub async fn is_disabled(pool: &PgPool, url: &str) -> Result<bool> {
    let row = sqlx::query_scalar!("SELECT 1 FROM webhook_disabled WHERE url = $1", url)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::classify)?;
    Ok(row.is_some())
}

pub async fn webhook_state(pool: &PgPool, id: &str) -> Result<Option<OutboxState>> {
    sqlx::query_as!(
        OutboxState,
        "SELECT status, attempts, next_attempt_at, last_status, last_error, delivered_at \
         FROM webhook_outbox WHERE id = $1",
        id
    )
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)
}

pub async fn prune_webhooks(pool: &PgPool, before: i64, limit: u32) -> Result<u64> {
    let done = sqlx::query!(
        "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox \
         WHERE status <> 'pending' AND created_at < $1 ORDER BY created_at LIMIT $2)",
        before,
        i64::from(limit)
    )
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(done.rows_affected())
}
