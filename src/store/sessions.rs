//! Sessions, join tokens, checklist slots and idempotency records.

pub use capturelink_store_types::sessions::{
    Created, ListFilter, NewSession, SessionRow, SessionStatus, SlotRow,
};

use sqlx::{FromRow, Row};

use super::events::insert_events;
use super::webhooks::{OutboxRow, enqueue_webhook};
use super::{EventRow, Result, Store, StoreError};
use super::{on_postgres, postgres};

pub(crate) const SESSION_COLUMNS: &str = "id, claim_ref, status, locale, vehicle, customer, webhook_url, \
     token_salt, created_at, expires_at, started_at, closed_at, closed_by";

fn session_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<SessionRow> {
    Ok(SessionRow::from_row(r)?)
}

impl Store {
    pub async fn find_idempotent(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<(String, Vec<u8>)>> {
        let db = on_postgres!(self, |pg| postgres::sessions::find_idempotent(
            pg, scope, key
        )
        .await);
        let row = sqlx::query(
            "SELECT resource_id, request_hash FROM idempotency_keys WHERE scope = ? AND key = ?",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(&db.read)
        .await
        .map_err(StoreError::classify)?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }

    /// Inserts a session with its tokens and slots in one transaction. With an idempotency key that
    /// was used before, inserts nothing and reports the earlier session.
    pub async fn create_session(&self, new: &NewSession) -> Result<Created> {
        let db = on_postgres!(self, |pg| postgres::sessions::create_session(pg, new).await);
        let mut tx = db.write.begin().await.map_err(StoreError::classify)?;
        if let Some((scope, key, hash)) = &new.idempotency {
            let prior = sqlx::query(
                "SELECT resource_id, request_hash FROM idempotency_keys WHERE scope = ? AND key = ?",
            )
            .bind(scope)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
            if let Some(r) = prior {
                return Ok(Created::Existing {
                    session_id: r.try_get(0)?,
                    request_hash: r.try_get(1)?,
                });
            }
            sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, request_hash, resource_id, created_at) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(scope)
            .bind(key)
            .bind(hash)
            .bind(&new.row.id)
            .bind(new.row.created_at)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
        }
        let s = &new.row;
        sqlx::query(
            "INSERT INTO sessions (id, claim_ref, status, locale, vehicle, customer, webhook_url, \
             token_salt, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            sqlx::query("INSERT INTO join_tokens (token_hash, session_id, role) VALUES (?, ?, ?)")
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

    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRow>> {
        let db = on_postgres!(self, |pg| postgres::sessions::get_session(pg, id).await);
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&db.read)
            .await
            .map_err(StoreError::classify)?;
        row.as_ref().map(session_from_row).transpose()
    }

    pub async fn list_sessions(&self, f: &ListFilter) -> Result<Vec<SessionRow>> {
        let db = on_postgres!(self, |pg| postgres::sessions::list_sessions(pg, f).await);
        let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE 1 = 1");
        if f.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if f.claim_ref.is_some() {
            sql.push_str(" AND claim_ref = ?");
        }
        if f.before_id.is_some() {
            sql.push_str(" AND id < ?");
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(s) = f.status {
            q = q.bind(s.as_str());
        }
        if let Some(c) = &f.claim_ref {
            q = q.bind(c);
        }
        if let Some(b) = &f.before_id {
            q = q.bind(b);
        }
        let rows = q
            .bind(i64::from(f.limit))
            .fetch_all(&db.read)
            .await
            .map_err(StoreError::classify)?;
        rows.iter().map(session_from_row).collect()
    }

    /// The session and role a join token belongs to.
    pub async fn session_by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<(SessionRow, String)>> {
        let db = on_postgres!(self, |pg| postgres::sessions::session_by_token(
            pg, token_hash
        )
        .await);
        let sql = format!(
            "SELECT s.{}, t.role AS token_role FROM join_tokens t JOIN sessions s ON s.id = t.session_id \
             WHERE t.token_hash = ?",
            SESSION_COLUMNS.replace(", ", ", s.")
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(token_hash)
            .fetch_optional(&db.read)
            .await
            .map_err(StoreError::classify)?;
        match row {
            Some(r) => Ok(Some((session_from_row(&r)?, r.try_get("token_role")?))),
            None => Ok(None),
        }
    }

    pub async fn slots(&self, session_id: &str) -> Result<Vec<SlotRow>> {
        let db = on_postgres!(self, |pg| postgres::sessions::slots(pg, session_id).await);
        let rows = sqlx::query(
            "SELECT id, position, area, angle, label, status, capture_id FROM checklist_slots \
             WHERE session_id = ? ORDER BY position",
        )
        .bind(session_id)
        .fetch_all(&db.read)
        .await
        .map_err(StoreError::classify)?;
        rows.iter().map(|r| Ok(SlotRow::from_row(r)?)).collect()
    }

    /// `created` -> `active` on the first join, with its webhook rows; false if the session was
    /// already past `created` (then nothing is written).
    pub async fn mark_active(&self, id: &str, now: i64, outbox: &[OutboxRow]) -> Result<bool> {
        let db = on_postgres!(self, |pg| postgres::sessions::mark_active(
            pg, id, now, outbox
        )
        .await);
        let mut tx = db.write.begin().await.map_err(StoreError::classify)?;
        let done = sqlx::query(
            "UPDATE sessions SET status = 'active', started_at = ? WHERE id = ? AND status = 'created'",
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

    /// Ends an open session as `closed` or `expired`, with its events and webhook rows, in one
    /// transaction; false if it had already ended (then nothing is written).
    pub async fn end_session(
        &self,
        id: &str,
        status: SessionStatus,
        now: i64,
        by: &str,
        events: &mut [EventRow],
        outbox: &[OutboxRow],
    ) -> Result<bool> {
        let numbered = self.numbers_events();
        let db = on_postgres!(self, |pg| postgres::sessions::end_session(
            pg, id, status, now, by, events, outbox, numbered
        )
        .await);
        debug_assert!(!status.is_open());
        let mut tx = db.write.begin().await.map_err(StoreError::classify)?;
        let done = sqlx::query(
            "UPDATE sessions SET status = ?, closed_at = ?, closed_by = ? \
             WHERE id = ? AND status IN ('created', 'active')",
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
        insert_events(&mut tx, events).await?;
        for row in outbox {
            enqueue_webhook(&mut tx, row).await?;
        }
        tx.commit().await.map_err(StoreError::classify)?;
        Ok(true)
    }

    /// Open sessions whose expiry has passed.
    pub async fn due_expiries(&self, now: i64, limit: u32) -> Result<Vec<String>> {
        let db = on_postgres!(self, |pg| postgres::sessions::due_expiries(pg, now, limit)
            .await);
        let rows = sqlx::query(
            "SELECT id FROM sessions WHERE status IN ('created', 'active') AND expires_at <= ? \
             ORDER BY expires_at LIMIT ?",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&db.read)
        .await
        .map_err(StoreError::classify)?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}

pub(crate) async fn insert_slot(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    session_id: &str,
    slot: &SlotRow,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO checklist_slots (session_id, id, position, area, angle, label, status, capture_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
