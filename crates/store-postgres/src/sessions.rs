//! Sessions, join tokens, checklist slots and idempotency records on PostgreSQL.

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{FromRow, Postgres, QueryBuilder, Row};

use crate::events::insert_events;
use crate::webhooks::enqueue_webhook;
use capturelink_store_types::events::EventRow;
use capturelink_store_types::sessions::{Created, ListFilter, NewSession};
use capturelink_store_types::sessions::{SessionRow, SessionStatus, SlotRow};
use capturelink_store_types::webhooks::OutboxRow;
use capturelink_store_types::{Result, StoreError};

pub(crate) const SESSION_COLUMNS: &str = "id, claim_ref, status, locale, vehicle, customer, webhook_url, \
     token_salt, created_at, expires_at, started_at, closed_at, closed_by";

/// A `sessions` row selected with [`SESSION_COLUMNS`].
pub(crate) fn session_from_row(r: &PgRow) -> Result<SessionRow> {
    Ok(SessionRow::from_row(r)?)
}

pub async fn find_idempotent(
    pool: &PgPool,
    scope: &str,
    key: &str,
) -> Result<Option<(String, Vec<u8>)>> {
    let row = sqlx::query(
        "SELECT resource_id, request_hash FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(match row {
        Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
        None => None,
    })
}

pub async fn create_session(pool: &PgPool, new: &NewSession) -> Result<Created> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    if let Some((scope, key, hash)) = &new.idempotency {
        // Claims the key first: with ON CONFLICT DO NOTHING, a node racing with the same key
        // waits for the other's transaction and, once that commits, inserts nothing (instead of
        // failing with a unique violation); it then reads the winner's row, as a retry would.
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, request_hash, resource_id, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(hash)
        .bind(&new.row.id)
        .bind(new.row.created_at)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        if claimed.rows_affected() != 1 {
            // READ COMMITTED: this statement sees the row committed by the winner.
            let prior = sqlx::query(
                "SELECT resource_id, request_hash FROM idempotency_keys \
                 WHERE scope = $1 AND key = $2",
            )
            .bind(scope)
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
            return Ok(Created::Existing {
                session_id: prior.try_get(0)?,
                request_hash: prior.try_get(1)?,
            });
        }
    }
    let s = &new.row;
    sqlx::query(
        "INSERT INTO sessions (id, claim_ref, status, locale, vehicle, customer, webhook_url, \
         token_salt, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&s.id)
    .bind(&s.claim_ref)
    .bind(s.status.as_str())
    .bind(&s.locale)
    .bind(&s.vehicle)
    .bind(&s.customer)
    .bind(&s.webhook_url)
    .bind(&s.token_salt)
    .bind(s.created_at)
    .bind(s.expires_at)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    for (hash, role) in &new.tokens {
        sqlx::query("INSERT INTO join_tokens (token_hash, session_id, role) VALUES ($1, $2, $3)")
            .bind(hash)
            .bind(&s.id)
            .bind(*role)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
    }
    for slot in &new.slots {
        insert_slot(&mut tx, &s.id, slot).await?;
    }
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(Created::New)
}

pub async fn get_session(pool: &PgPool, id: &str) -> Result<Option<SessionRow>> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::classify)?;
    row.as_ref().map(session_from_row).transpose()
}

pub async fn list_sessions(pool: &PgPool, f: &ListFilter) -> Result<Vec<SessionRow>> {
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE 1 = 1"
    ));
    if let Some(s) = f.status {
        q.push(" AND status = ").push_bind(s.as_str());
    }
    if let Some(c) = &f.claim_ref {
        q.push(" AND claim_ref = ").push_bind(c);
    }
    if let Some(b) = &f.before_id {
        q.push(" AND id < ").push_bind(b);
    }
    q.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(f.limit));
    let rows = q
        .build()
        .fetch_all(pool)
        .await
        .map_err(StoreError::classify)?;
    rows.iter().map(session_from_row).collect()
}

pub async fn session_by_token(
    pool: &PgPool,
    token_hash: &[u8],
) -> Result<Option<(SessionRow, String)>> {
    let sql = format!(
        "SELECT s.{}, t.role AS token_role FROM join_tokens t JOIN sessions s ON s.id = t.session_id \
         WHERE t.token_hash = $1",
        SESSION_COLUMNS.replace(", ", ", s.")
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(token_hash)
        .fetch_optional(pool)
        .await
        .map_err(StoreError::classify)?;
    match row {
        Some(r) => Ok(Some((session_from_row(&r)?, r.try_get("token_role")?))),
        None => Ok(None),
    }
}

pub async fn slots(pool: &PgPool, session_id: &str) -> Result<Vec<SlotRow>> {
    let rows = sqlx::query(
        "SELECT id, position, area, angle, label, status, capture_id FROM checklist_slots \
         WHERE session_id = $1 ORDER BY position",
    )
    .bind(session_id)
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    rows.iter().map(|r| Ok(SlotRow::from_row(r)?)).collect()
}

pub async fn mark_active(pool: &PgPool, id: &str, now: i64, outbox: &[OutboxRow]) -> Result<bool> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    // Conditional UPDATE: a node racing for the same session waits for the row lock and then
    // re-checks `status = 'created'`, so only one of them wins and writes the webhook rows.
    let done = sqlx::query(
        "UPDATE sessions SET status = 'active', started_at = $1 WHERE id = $2 AND status = 'created'",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    for row in outbox {
        enqueue_webhook(&mut tx, row).await?;
    }
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(true)
}

// The Store method's arguments, and whether the database numbers the events.
#[allow(clippy::too_many_arguments)]
pub async fn end_session(
    pool: &PgPool,
    id: &str,
    status: SessionStatus,
    now: i64,
    by: &str,
    events: &mut [EventRow],
    outbox: &[OutboxRow],
    numbered: bool,
) -> Result<bool> {
    debug_assert!(!status.is_open());
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    // Conditional UPDATE: of nodes racing to end the session (a close against the expiry
    // sweeper), one changes the row; the others re-check the status after its commit and stop.
    let done = sqlx::query(
        "UPDATE sessions SET status = $1, closed_at = $2, closed_by = $3 \
         WHERE id = $4 AND status IN ('created', 'active')",
    )
    .bind(status.as_str())
    .bind(now)
    .bind(by)
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    insert_events(&mut tx, events, numbered).await?;
    for row in outbox {
        enqueue_webhook(&mut tx, row).await?;
    }
    // Several nodes: its connections are closed with it, wherever they are.
    sqlx::query("UPDATE participants SET connected = FALSE WHERE session_id = $1 AND connected")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(true)
}

pub async fn due_expiries(pool: &PgPool, now: i64, limit: u32) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT id FROM sessions WHERE status IN ('created', 'active') AND expires_at <= $1 \
         ORDER BY expires_at LIMIT $2",
    )
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

pub(crate) async fn insert_slot(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    session_id: &str,
    slot: &SlotRow,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO checklist_slots (session_id, id, position, area, angle, label, status, capture_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(session_id)
    .bind(&slot.id)
    .bind(slot.position)
    .bind(&slot.area)
    .bind(&slot.angle)
    .bind(&slot.label)
    .bind(&slot.status)
    .bind(&slot.capture_id)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}
