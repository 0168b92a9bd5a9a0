//! Captures, capture requests and checklist changes on PostgreSQL.

use std::collections::HashSet;

use sqlx::PgPool;

use super::events::insert_events;
use super::sessions::insert_slot;
use super::webhooks::enqueue_webhook;
use capturelink_store_types::captures::{CaptureRow, NewCapture, RequestRow};
use capturelink_store_types::events::EventRow;
use capturelink_store_types::sessions::SlotRow;
use capturelink_store_types::{Result, StoreError};

pub async fn get_capture(pool: &PgPool, id: &str) -> Result<Option<CaptureRow>> {
    sqlx::query_as!(
        CaptureRow,
        "SELECT id, session_id, slot_id, area, angle, note, source, request_id, mime, width, \
         height, bytes, sha256, sharpness, brightness, warnings, uploaded_by, idempotency_key, \
         request_hash, created_at FROM captures WHERE id = $1",
        id
    )
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)
}

pub async fn capture_by_idempotency_key(
    pool: &PgPool,
    session_id: &str,
    key: &str,
) -> Result<Option<CaptureRow>> {
    sqlx::query_as!(
        CaptureRow,
        "SELECT id, session_id, slot_id, area, angle, note, source, request_id, mime, width, \
         height, bytes, sha256, sharpness, brightness, warnings, uploaded_by, idempotency_key, \
         request_hash, created_at FROM captures WHERE session_id = $1 AND idempotency_key = $2",
        session_id,
        key
    )
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)
}

pub async fn list_captures(pool: &PgPool, session_id: &str) -> Result<Vec<CaptureRow>> {
    let rows = sqlx::query_as!(
        CaptureRow,
        "SELECT id, session_id, slot_id, area, angle, note, source, request_id, mime, width, \
         height, bytes, sha256, sharpness, brightness, warnings, uploaded_by, idempotency_key, \
         request_hash, created_at FROM captures WHERE session_id = $1 ORDER BY created_at, id",
        session_id
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    // A purge deletes every capture row of its session, so only an empty list may be a purge.
    if rows.is_empty() {
        let purged_at: Option<Option<i64>> =
            sqlx::query_scalar!("SELECT purged_at FROM sessions WHERE id = $1", session_id)
                .fetch_optional(pool)
                .await
                .map_err(StoreError::classify)?;
        if purged_at.flatten().is_some() {
            return Err(StoreError::Purged);
        }
    }
    Ok(rows)
}

pub async fn capture_count(pool: &PgPool, session_id: &str) -> Result<u64> {
    let n: i64 = sqlx::query_scalar!(
        r#"SELECT COUNT(*) AS "count!" FROM captures WHERE session_id = $1"#,
        session_id
    )
    .fetch_one(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub async fn capture_hashes(pool: &PgPool) -> Result<HashSet<String>> {
    let hashes = sqlx::query_scalar!(
        // GROUP BY, not DISTINCT: the same text as SQLite's statement would share its query data
        // (scripts/sqlx-prepare).
        "SELECT sha256 FROM captures GROUP BY sha256",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(hashes.into_iter().collect())
}

pub async fn hash_in_use(pool: &PgPool, sha256: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar!(
        r#"SELECT COUNT(*) AS "count!" FROM captures WHERE sha256 = $1"#,
        sha256
    )
    .fetch_one(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(n > 0)
}

pub async fn record_capture_request(
    pool: &PgPool,
    session_id: &str,
    r: &RequestRow,
    now: i64,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO capture_requests \
         (session_id, request_id, area, angle, slot_id, status, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6) ON CONFLICT DO NOTHING",
        session_id,
        r.request_id,
        r.area,
        r.angle,
        r.slot_id,
        now
    )
    .execute(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

pub async fn capture_request(
    pool: &PgPool,
    session_id: &str,
    request_id: &str,
) -> Result<Option<RequestRow>> {
    sqlx::query_as!(
        RequestRow,
        "SELECT request_id, area, angle, slot_id, status, capture_id FROM capture_requests \
         WHERE session_id = $1 AND request_id = $2",
        session_id,
        request_id
    )
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)
}

pub async fn insert_capture(pool: &PgPool, new: NewCapture<'_>, numbered: bool) -> Result<()> {
    let c = new.capture;
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    // Several nodes: FOR SHARE on the session row waits out a purge (or close) in progress and
    // holds off the next one until this commits, so a purge cannot miss this capture's rows; a
    // session purged meanwhile takes no more captures.
    let purged_at: Option<Option<i64>> = sqlx::query_scalar!(
        "SELECT purged_at FROM sessions WHERE id = $1 FOR SHARE",
        c.session_id
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    if purged_at.flatten().is_some() {
        return Err(StoreError::Purged);
    }
    sqlx::query!(
        "INSERT INTO captures (id, session_id, slot_id, area, angle, note, source, request_id, \
         mime, width, height, bytes, sha256, sharpness, brightness, warnings, uploaded_by, \
         idempotency_key, request_hash, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
         $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
        c.id,
        c.session_id,
        c.slot_id,
        c.area,
        c.angle,
        c.note,
        c.source,
        c.request_id,
        c.mime,
        c.width,
        c.height,
        c.bytes,
        c.sha256,
        c.sharpness,
        c.brightness,
        c.warnings,
        c.uploaded_by,
        c.idempotency_key,
        c.request_hash,
        c.created_at
    )
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    if let Some(slot) = &c.slot_id {
        // Unconditional, as on SQLite: the UPDATE locks the slot row, the last capture wins.
        sqlx::query!(
            "UPDATE checklist_slots SET status = 'done', capture_id = $1 \
             WHERE session_id = $2 AND id = $3",
            c.id,
            c.session_id,
            slot
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    }
    if let Some(req) = new.fulfils {
        // Conditional: a racing transaction (on any node) that fulfilled the request first holds
        // its row lock; this UPDATE waits for its commit, re-checks the status and matches no row.
        let updated = sqlx::query!(
            "UPDATE capture_requests SET status = 'fulfilled', capture_id = $1 \
             WHERE session_id = $2 AND request_id = $3 AND status <> 'fulfilled'",
            c.id,
            c.session_id,
            req
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::RequestFulfilled);
        }
    }
    insert_events(&mut tx, new.events, numbered).await?;
    for row in new.outbox {
        enqueue_webhook(&mut tx, row).await?;
    }
    tx.commit().await.map_err(StoreError::classify)
}

/// A slot id taken concurrently on another node fails on the primary key (no room lock spans
/// nodes).
pub async fn insert_slot_with_events(
    pool: &PgPool,
    session_id: &str,
    slot: &SlotRow,
    events: &mut [EventRow],
    numbered: bool,
) -> Result<()> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    insert_slot(&mut tx, session_id, slot).await?;
    insert_events(&mut tx, events, numbered).await?;
    tx.commit().await.map_err(StoreError::classify)
}
