//! Sessions, join tokens, checklist slots and idempotency records.

pub use capturelink_store_types::sessions::{
    Created, ListFilter, NewSession, SessionRow, SessionStatus, SlotRow,
};

use super::events::insert_events;
use super::webhooks::{OutboxRow, enqueue_webhook};
use super::{EventRow, Result, Store, StoreError};
use super::{on_postgres, postgres};

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
        let row = sqlx::query!(
            "SELECT resource_id, request_hash FROM idempotency_keys WHERE scope = ? AND key = ?",
            scope,
            key
        )
        .fetch_optional(&db.read)
        .await
        .map_err(StoreError::classify)?;
        Ok(row.map(|r| (r.resource_id, r.request_hash)))
    }

    /// Inserts a session with its tokens and slots in one transaction. With an idempotency key that
    /// was used before, inserts nothing and reports the earlier session.
    pub async fn create_session(&self, new: &NewSession) -> Result<Created> {
        let db = on_postgres!(self, |pg| postgres::sessions::create_session(pg, new).await);
        let mut tx = db.write.begin().await.map_err(StoreError::classify)?;
        if let Some((scope, key, hash)) = &new.idempotency {
            let prior = sqlx::query!("SELECT resource_id, request_hash FROM idempotency_keys WHERE scope = ? AND key = ?", scope, key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
            if let Some(r) = prior {
                return Ok(Created::Existing {
                    session_id: r.resource_id,
                    request_hash: r.request_hash,
                });
            }
            sqlx::query!(
                "INSERT INTO idempotency_keys (scope, key, request_hash, resource_id, created_at) \
                 VALUES (?, ?, ?, ?, ?)",
                scope,
                key,
                hash,
                &new.row.id,
                new.row.created_at
            )
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
        }
        let s = &new.row;
        sqlx::query!(
            "INSERT INTO sessions (id, claim_ref, status, locale, vehicle, customer, webhook_url, \
             token_salt, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &s.id,
            &s.claim_ref,
            s.status.as_str(),
            &s.locale,
            &s.vehicle,
            &s.customer,
            &s.webhook_url,
            &s.token_salt,
            s.created_at,
            s.expires_at
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        for (hash, role) in &new.tokens {
            sqlx::query!(
                "INSERT INTO join_tokens (token_hash, session_id, role) VALUES (?, ?, ?)",
                hash,
                &s.id,
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

    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRow>> {
        let db = on_postgres!(self, |pg| postgres::sessions::get_session(pg, id).await);
        sqlx::query_as!(
            SessionRow,
            r#"SELECT id, claim_ref, status AS "status: _", locale, vehicle, customer, webhook_url,
                token_salt, created_at, expires_at, started_at, closed_at, closed_by
               FROM sessions WHERE id = ?"#,
            id
        )
        .fetch_optional(&db.read)
        .await
        .map_err(StoreError::classify)
    }

    pub async fn list_sessions(&self, f: &ListFilter) -> Result<Vec<SessionRow>> {
        let db = on_postgres!(self, |pg| postgres::sessions::list_sessions(pg, f).await);
        // Three static statements, written so that SQLite keeps its index paths (it plans a
        // statement once, for any parameters): a claim reference is looked up in
        // `sessions_claim_ref`, and a page's cursor seeks in the primary key. A condition
        // `(?n IS NULL OR …)` on either would scan the whole table (EXPLAIN QUERY PLAN); an
        // optional `status` is one, which only filters.
        let status = f.status.map(SessionStatus::as_str);
        let limit = i64::from(f.limit);
        let rows = match (&f.claim_ref, &f.before_id) {
            (Some(claim_ref), before) => {
                sqlx::query_as!(
                    SessionRow,
                    r#"SELECT id, claim_ref, status AS "status: _", locale, vehicle, customer,
                        webhook_url, token_salt, created_at, expires_at, started_at, closed_at,
                        closed_by
                       FROM sessions
                       WHERE claim_ref = ?1 AND (?2 IS NULL OR status = ?2)
                         AND (?3 IS NULL OR id < ?3)
                       ORDER BY id DESC LIMIT ?4"#,
                    claim_ref,
                    status,
                    before,
                    limit
                )
                .fetch_all(&db.read)
                .await
            }
            (None, Some(before)) => {
                sqlx::query_as!(
                    SessionRow,
                    r#"SELECT id, claim_ref, status AS "status: _", locale, vehicle, customer,
                        webhook_url, token_salt, created_at, expires_at, started_at, closed_at,
                        closed_by
                       FROM sessions
                       WHERE (?1 IS NULL OR status = ?1) AND id < ?2
                       ORDER BY id DESC LIMIT ?3"#,
                    status,
                    before,
                    limit
                )
                .fetch_all(&db.read)
                .await
            }
            (None, None) => {
                sqlx::query_as!(
                    SessionRow,
                    r#"SELECT id, claim_ref, status AS "status: _", locale, vehicle, customer,
                        webhook_url, token_salt, created_at, expires_at, started_at, closed_at,
                        closed_by
                       FROM sessions
                       WHERE (?1 IS NULL OR status = ?1)
                       ORDER BY id DESC LIMIT ?2"#,
                    status,
                    limit
                )
                .fetch_all(&db.read)
                .await
            }
        };
        rows.map_err(StoreError::classify)
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
        let row = sqlx::query!(
            r#"SELECT s.id, s.claim_ref, s.status AS "status: SessionStatus", s.locale, s.vehicle,
                s.customer, s.webhook_url, s.token_salt, s.created_at, s.expires_at, s.started_at,
                s.closed_at, s.closed_by, t.role
               FROM join_tokens t JOIN sessions s ON s.id = t.session_id
               WHERE t.token_hash = ?"#,
            token_hash
        )
        .fetch_optional(&db.read)
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
            (session, r.role)
        }))
    }

    pub async fn slots(&self, session_id: &str) -> Result<Vec<SlotRow>> {
        let db = on_postgres!(self, |pg| postgres::sessions::slots(pg, session_id).await);
        sqlx::query_as!(
            SlotRow,
            "SELECT id, position, area, angle, label, status, capture_id FROM checklist_slots \
             WHERE session_id = ? ORDER BY position",
            session_id
        )
        .fetch_all(&db.read)
        .await
        .map_err(StoreError::classify)
    }

    /// `created` -> `active` on the first join, with its webhook rows; false if the session was
    /// already past `created` (then nothing is written).
    pub async fn mark_active(&self, id: &str, now: i64, outbox: &[OutboxRow]) -> Result<bool> {
        let db = on_postgres!(self, |pg| postgres::sessions::mark_active(
            pg, id, now, outbox
        )
        .await);
        let mut tx = db.write.begin().await.map_err(StoreError::classify)?;
        let done = sqlx::query!("UPDATE sessions SET status = 'active', started_at = ? WHERE id = ? AND status = 'created'", now, id)
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
        let done = sqlx::query!(
            "UPDATE sessions SET status = ?, closed_at = ?, closed_by = ? \
             WHERE id = ? AND status IN ('created', 'active')",
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
        sqlx::query_scalar!(
            "SELECT id FROM sessions WHERE status IN ('created', 'active') AND expires_at <= ? \
             ORDER BY expires_at LIMIT ?",
            now,
            i64::from(limit)
        )
        .fetch_all(&db.read)
        .await
        .map_err(StoreError::classify)
    }
}

pub(crate) async fn insert_slot(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    session_id: &str,
    slot: &SlotRow,
) -> Result<()> {
    sqlx::query!("INSERT INTO checklist_slots (session_id, id, position, area, angle, label, status, capture_id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)", session_id, &slot.id, slot.position, &slot.area, &slot.angle, &slot.label, &slot.status, &slot.capture_id)
    .execute(&mut **tx)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}
