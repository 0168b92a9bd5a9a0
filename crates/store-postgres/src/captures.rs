//! Captures, capture requests and checklist changes on PostgreSQL.

use std::collections::HashSet;

use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool, Row};

use super::events::insert_events;
use super::sessions::insert_slot;
use super::webhooks::enqueue_webhook;
use capturelink_store_types::captures::{CaptureRow, NewCapture, RequestRow};
use capturelink_store_types::events::EventRow;
use capturelink_store_types::sessions::SlotRow;
use capturelink_store_types::{Result, StoreError};

fn capture_from_row(r: &PgRow) -> Result<CaptureRow> {
    Ok(CaptureRow::from_row(r)?)
}

pub(crate) const CAPTURE_COLUMNS: &str = "id, session_id, slot_id, area, angle, note, source, request_id, mime, \
     width, height, bytes, sha256, sharpness, brightness, warnings, uploaded_by, idempotency_key, \
     request_hash, created_at";

pub async fn get_capture(pool: &PgPool, id: &str) -> Result<Option<CaptureRow>> {
    let sql = format!("SELECT {CAPTURE_COLUMNS} FROM captures WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::classify)?;
    row.as_ref().map(capture_from_row).transpose()
}

pub async fn capture_by_idempotency_key(
    pool: &PgPool,
    session_id: &str,
    key: &str,
) -> Result<Option<CaptureRow>> {
    let sql = format!(
        "SELECT {CAPTURE_COLUMNS} FROM captures WHERE session_id = $1 AND idempotency_key = $2"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(session_id)
        .bind(key)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::classify)?;
    row.as_ref().map(capture_from_row).transpose()
}

pub async fn list_captures(pool: &PgPool, session_id: &str) -> Result<Vec<CaptureRow>> {
    let sql = format!(
        "SELECT {CAPTURE_COLUMNS} FROM captures WHERE session_id = $1 ORDER BY created_at, id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(session_id)
        .fetch_all(pool)
        .await
        .map_err(StoreError::classify)?;
    // A purge deletes every capture row of its session, so only an empty list may be a purge.
    if rows.is_empty() {
        let purged_at: Option<Option<i64>> =
            sqlx::query_scalar("SELECT purged_at FROM sessions WHERE id = $1")
                .bind(session_id)
                .fetch_optional(pool)
                .await
                .map_err(StoreError::classify)?;
        if purged_at.flatten().is_some() {
            return Err(StoreError::Purged);
        }
    }
    rows.iter().map(capture_from_row).collect()
}

pub async fn capture_count(pool: &PgPool, session_id: &str) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM captures WHERE session_id = $1")
        .bind(session_id)
        .fetch_one(pool)
        .await
        .map_err(StoreError::classify)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub async fn capture_hashes(pool: &PgPool) -> Result<HashSet<String>> {
    let rows = sqlx::query("SELECT DISTINCT sha256 FROM captures")
        .fetch_all(pool)
        .await
        .map_err(StoreError::classify)?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

pub async fn hash_in_use(pool: &PgPool, sha256: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM captures WHERE sha256 = $1")
        .bind(sha256)
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
    sqlx::query(
        "INSERT INTO capture_requests \
         (session_id, request_id, area, angle, slot_id, status, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6) ON CONFLICT DO NOTHING",
    )
    .bind(session_id)
    .bind(&r.request_id)
    .bind(&r.area)
    .bind(&r.angle)
    .bind(&r.slot_id)
    .bind(now)
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
    let row = sqlx::query(
        "SELECT request_id, area, angle, slot_id, status, capture_id FROM capture_requests \
         WHERE session_id = $1 AND request_id = $2",
    )
    .bind(session_id)
    .bind(request_id)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(RequestRow::from_row(&r)?)),
    }
}

pub async fn insert_capture(pool: &PgPool, new: NewCapture<'_>, numbered: bool) -> Result<()> {
    let c = new.capture;
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    // Several nodes: FOR SHARE on the session row waits out a purge (or close) in progress and
    // holds off the next one until this commits, so a purge cannot miss this capture's rows; a
    // session purged meanwhile takes no more captures.
    let purged_at: Option<Option<i64>> =
        sqlx::query_scalar("SELECT purged_at FROM sessions WHERE id = $1 FOR SHARE")
            .bind(&c.session_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
    if purged_at.flatten().is_some() {
        return Err(StoreError::Purged);
    }
    let sql = format!(
        "INSERT INTO captures ({CAPTURE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
         $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&c.id)
        .bind(&c.session_id)
        .bind(&c.slot_id)
        .bind(&c.area)
        .bind(&c.angle)
        .bind(&c.note)
        .bind(&c.source)
        .bind(&c.request_id)
        .bind(&c.mime)
        .bind(c.width)
        .bind(c.height)
        .bind(c.bytes)
        .bind(&c.sha256)
        .bind(c.sharpness)
        .bind(c.brightness)
        .bind(&c.warnings)
        .bind(&c.uploaded_by)
        .bind(&c.idempotency_key)
        .bind(&c.request_hash)
        .bind(c.created_at)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    if let Some(slot) = &c.slot_id {
        // Unconditional, as on SQLite: the UPDATE locks the slot row, the last capture wins.
        sqlx::query(
            "UPDATE checklist_slots SET status = 'done', capture_id = $1 \
             WHERE session_id = $2 AND id = $3",
        )
        .bind(&c.id)
        .bind(&c.session_id)
        .bind(slot)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    }
    if let Some(req) = new.fulfils {
        // Conditional: a racing transaction (on any node) that fulfilled the request first holds
        // its row lock; this UPDATE waits for its commit, re-checks the status and matches no row.
        let updated = sqlx::query(
            "UPDATE capture_requests SET status = 'fulfilled', capture_id = $1 \
             WHERE session_id = $2 AND request_id = $3 AND status <> 'fulfilled'",
        )
        .bind(&c.id)
        .bind(&c.session_id)
        .bind(req)
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
