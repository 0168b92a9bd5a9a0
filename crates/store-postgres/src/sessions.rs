//! Sessions, join tokens, checklist slots and idempotency records on PostgreSQL.

use sqlx::Postgres;
use sqlx::postgres::PgPool;

use crate::events::insert_events;
use crate::webhooks::enqueue_webhook;
use capturelink_store_types::events::EventRow;
use capturelink_store_types::sessions::{Created, ListFilter, NewSession};
use capturelink_store_types::sessions::{SessionRow, SessionStatus, SlotRow};
use capturelink_store_types::webhooks::OutboxRow;
use capturelink_store_types::{Result, StoreError};

pub async fn find_idempotent(
    pool: &PgPool,
    scope: &str,
    key: &str,
) -> Result<Option<(String, Vec<u8>)>> {
    let row = sqlx::query!(
        "SELECT resource_id, request_hash FROM idempotency_keys WHERE scope = $1 AND key = $2",
        scope,
        key
    )
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(row.map(|r| (r.resource_id, r.request_hash)))
}

pub async fn create_session(pool: &PgPool, new: &NewSession) -> Result<Created> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    if let Some((scope, key, hash)) = &new.idempotency {
        // Claims the key first: with ON CONFLICT DO NOTHING, a node racing with the same key
        // waits for the other's transaction and, once that commits, inserts nothing (instead of
        // failing with a unique violation); it then reads the winner's row, as a retry would.
        let claimed = sqlx::query!(
            "INSERT INTO idempotency_keys (scope, key, request_hash, resource_id, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, key) DO NOTHING",
            scope,
            key,
            hash,
            new.row.id,
            new.row.created_at
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        if claimed.rows_affected() != 1 {
            // READ COMMITTED: this statement sees the row committed by the winner.
            let prior = sqlx::query!(
                "SELECT resource_id, request_hash FROM idempotency_keys \
                 WHERE scope = $1 AND key = $2",
                scope,
                key
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
            return Ok(Created::Existing {
                session_id: prior.resource_id,
                request_hash: prior.request_hash,
            });
        }
    }
    let s = &new.row;
    sqlx::query!(
        "INSERT INTO sessions (id, claim_ref, status, locale, vehicle, customer, webhook_url, \
         token_salt, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        s.id,
        s.claim_ref,
        s.status.as_str(),
        s.locale,
        s.vehicle,
        s.customer,
        s.webhook_url,
        s.token_salt,
        s.created_at,
        s.expires_at
    )
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    for (hash, role) in &new.tokens {
        sqlx::query!(
            "INSERT INTO join_tokens (token_hash, session_id, role) VALUES ($1, $2, $3)",
            hash,
            s.id,
            *role
        )
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
    sqlx::query_as!(
        SessionRow,
        r#"SELECT id, claim_ref, status AS "status: _", locale, vehicle, customer, webhook_url,
         token_salt, created_at, expires_at, started_at, closed_at, closed_by
         FROM sessions WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)
}

pub async fn list_sessions(pool: &PgPool, f: &ListFilter) -> Result<Vec<SessionRow>> {
    // Three static statements, so that a plan PostgreSQL keeps for any parameters (a generic
    // plan, after a few runs of a prepared statement) still uses the indexes: a claim reference
    // is looked up in `sessions_claim_ref`, and a page's cursor is a range of the primary key.
    // An optional `status` is a NULL parameter that matches every row.
    let status = f.status.map(SessionStatus::as_str);
    let limit = i64::from(f.limit);
    let rows = match (&f.claim_ref, &f.before_id) {
        (Some(claim_ref), before) => {
            sqlx::query_as!(
                SessionRow,
                r#"SELECT id, claim_ref, status AS "status: _", locale, vehicle, customer,
                 webhook_url, token_salt, created_at, expires_at, started_at, closed_at, closed_by
                 FROM sessions
                 WHERE claim_ref = $1 AND ($2::text IS NULL OR status = $2)
                   AND ($3::text IS NULL OR id < $3)
                 ORDER BY id DESC LIMIT $4"#,
                claim_ref,
                status,
                before.as_deref(),
                limit
            )
            .fetch_all(pool)
            .await
        }
        (None, Some(before)) => {
            sqlx::query_as!(
                SessionRow,
                r#"SELECT id, claim_ref, status AS "status: _", locale, vehicle, customer,
                 webhook_url, token_salt, created_at, expires_at, started_at, closed_at, closed_by
                 FROM sessions
                 WHERE ($1::text IS NULL OR status = $1) AND id < $2
                 ORDER BY id DESC LIMIT $3"#,
                status,
                before,
                limit
            )
            .fetch_all(pool)
            .await
        }
        (None, None) => {
            sqlx::query_as!(
                SessionRow,
                r#"SELECT id, claim_ref, status AS "status: _", locale, vehicle, customer,
                 webhook_url, token_salt, created_at, expires_at, started_at, closed_at, closed_by
                 FROM sessions
                 WHERE ($1::text IS NULL OR status = $1)
                 ORDER BY id DESC LIMIT $2"#,
                status,
                limit
            )
            .fetch_all(pool)
            .await
        }
    };
    rows.map_err(StoreError::classify)
}

pub async fn session_by_token(
    pool: &PgPool,
    token_hash: &[u8],
) -> Result<Option<(SessionRow, String)>> {
    let row = sqlx::query!(
        r#"SELECT s.id, s.claim_ref, s.status AS "status: SessionStatus", s.locale, s.vehicle,
         s.customer, s.webhook_url, s.token_salt, s.created_at, s.expires_at, s.started_at,
         s.closed_at, s.closed_by, t.role AS token_role
         FROM join_tokens t JOIN sessions s ON s.id = t.session_id
         WHERE t.token_hash = $1"#,
        token_hash
    )
    .fetch_optional(pool)
    .await
    .map_err(StoreError::classify)?;
    Ok(row.map(|r| {
        let session = SessionRow {
            id: r.id,
            claim_ref: r.claim_ref,
            status: r.status,
            locale: r.locale,
            vehicle: r.vehicle,
            customer: r.customer,
            webhook_url: r.webhook_url,
            token_salt: r.token_salt,
            created_at: r.created_at,
            expires_at: r.expires_at,
            started_at: r.started_at,
            closed_at: r.closed_at,
            closed_by: r.closed_by,
        };
        (session, r.token_role)
    }))
}

pub async fn slots(pool: &PgPool, session_id: &str) -> Result<Vec<SlotRow>> {
    sqlx::query_as!(
        SlotRow,
        "SELECT id, position, area, angle, label, status, capture_id FROM checklist_slots \
         WHERE session_id = $1 ORDER BY position",
        session_id
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)
}

pub async fn mark_active(pool: &PgPool, id: &str, now: i64, outbox: &[OutboxRow]) -> Result<bool> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    // Conditional UPDATE: a node racing for the same session waits for the row lock and then
    // re-checks `status = 'created'`, so only one of them wins and writes the webhook rows.
    let done = sqlx::query!(
        "UPDATE sessions SET status = 'active', started_at = $1 WHERE id = $2 AND status = 'created'",
        now,
        id
    )
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
    let done = sqlx::query!(
        "UPDATE sessions SET status = $1, closed_at = $2, closed_by = $3 \
         WHERE id = $4 AND status IN ('created', 'active')",
        status.as_str(),
        now,
        by,
        id
    )
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
    sqlx::query!(
        "UPDATE participants SET connected = FALSE WHERE session_id = $1 AND connected",
        id
    )
    .execute(&mut *tx)
    .await
    .map_err(StoreError::classify)?;
    tx.commit().await.map_err(StoreError::classify)?;
    Ok(true)
}

pub async fn due_expiries(pool: &PgPool, now: i64, limit: u32) -> Result<Vec<String>> {
    sqlx::query_scalar!(
        "SELECT id FROM sessions WHERE status IN ('created', 'active') AND expires_at <= $1 \
         ORDER BY expires_at LIMIT $2",
        now,
        i64::from(limit)
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::classify)
}

pub(crate) async fn insert_slot(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    session_id: &str,
    slot: &SlotRow,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO checklist_slots (session_id, id, position, area, angle, label, status, capture_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        session_id,
        slot.id,
        slot.position,
        slot.area,
        slot.angle,
        slot.label,
        slot.status,
        slot.capture_id
    )
    .execute(&mut **tx)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}
