//! The webhook outbox: one row per (event, endpoint), written in the same transaction as the change
//! it reports, and worked off by [`crate::webhooks::Dispatcher`]. Endpoints that answered 410 Gone
//! are remembered in `webhook_disabled` and get nothing more.
//!
//! Every update made on behalf of a delivery attempt is conditioned on the row still being
//! `pending`, so an endpoint disabled while an attempt was in flight stays disabled.

pub use capturelink_store_types::webhooks::{
    DueWebhook, OutboxRow, OutboxState, WEBHOOK_LEASE_MS, new_message_id,
};

use super::{Result, Store, StoreError};
use super::{on_postgres, postgres};

/// Writes one delivery inside the caller's transaction, so it commits (or not) with the change it
/// reports. A row for an endpoint that is already disabled is written as `disabled`, never sent.
/// Poke the dispatcher's [`crate::webhooks::Wakeup`] after the commit.
pub async fn enqueue_webhook(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    row: &OutboxRow,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO webhook_outbox (id, session_id, url, event_type, payload, created_at, \
         next_attempt_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, \
         CASE WHEN EXISTS (SELECT 1 FROM webhook_disabled WHERE url = ?) \
         THEN 'disabled' ELSE 'pending' END)",
        &row.id,
        &row.session_id,
        &row.url,
        &row.event_type,
        &row.payload,
        row.created_at,
        row.created_at,
        &row.url
    )
    .execute(&mut **tx)
    .await
    .map_err(StoreError::classify)?;
    Ok(())
}

impl Store {
    /// Writes deliveries in a transaction of their own, for callers that hold none.
    pub async fn enqueue_webhooks(&self, rows: &[OutboxRow]) -> Result<()> {
        let db = on_postgres!(self, |pg| postgres::webhooks::enqueue_webhooks(pg, rows)
            .await);
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = db.write.begin().await.map_err(StoreError::classify)?;
        for row in rows {
            enqueue_webhook(&mut tx, row).await?;
        }
        tx.commit().await.map_err(StoreError::classify)
    }

    /// Pending deliveries due at `now`, the longest waiting first.
    pub async fn due_webhooks(&self, now: i64, limit: u32) -> Result<Vec<DueWebhook>> {
        let claims = self.claims_webhooks();
        let db = on_postgres!(self, |pg| if claims {
            postgres::webhooks::claim_webhooks(pg, now, limit, WEBHOOK_LEASE_MS).await
        } else {
            postgres::webhooks::due_webhooks(pg, now, limit).await
        });
        sqlx::query_as!(
            DueWebhook,
            "SELECT id, session_id, url, event_type, payload, created_at, attempts \
             FROM webhook_outbox WHERE status = 'pending' AND next_attempt_at <= ? \
             ORDER BY next_attempt_at, id LIMIT ?",
            now,
            i64::from(limit)
        )
        .fetch_all(&db.read)
        .await
        .map_err(StoreError::classify)
    }

    /// Does [`Store::due_webhooks`] claim the rows it returns (several nodes share the outbox)?
    /// Then it returns only as many as the caller will deliver now, and each row returned is
    /// another node's again only after [`WEBHOOK_LEASE_MS`] unless its outcome is recorded.
    /// Otherwise (one node) it only reads, and the caller skips the rows it has in flight.
    pub fn claims_webhooks(&self) -> bool {
        self.numbers_events()
    }

    /// The earliest `next_attempt_at` of a pending delivery later than `after`, if any: how long
    /// the dispatcher may sleep.
    pub async fn next_webhook_due(&self, after: i64) -> Result<Option<i64>> {
        let db = on_postgres!(self, |pg| postgres::webhooks::next_webhook_due(pg, after)
            .await);
        sqlx::query_scalar!(
            "SELECT MIN(next_attempt_at) FROM webhook_outbox \
             WHERE status = 'pending' AND next_attempt_at > ?",
            after
        )
        .fetch_one(&db.read)
        .await
        .map_err(StoreError::classify)
    }

    /// The endpoint answered 2xx. Recorded even if the row was disabled meanwhile: it did arrive.
    pub async fn mark_delivered(
        &self,
        id: &str,
        now: i64,
        attempts: i64,
        status: u16,
    ) -> Result<()> {
        let db = on_postgres!(self, |pg| postgres::webhooks::mark_delivered(
            pg, id, now, attempts, status
        )
        .await);
        sqlx::query!(
            "UPDATE webhook_outbox SET status = 'delivered', delivered_at = ?, attempts = ?, \
             last_status = ?, last_error = NULL WHERE id = ?",
            now,
            attempts,
            i64::from(status),
            id
        )
        .execute(&db.write)
        .await
        .map_err(StoreError::classify)?;
        Ok(())
    }

    /// The attempt failed; try again at `next_attempt_at`. `status` is the HTTP status if one came.
    pub async fn mark_retry(
        &self,
        id: &str,
        next_attempt_at: i64,
        attempts: i64,
        status: Option<u16>,
        error: Option<&str>,
    ) -> Result<()> {
        let db = on_postgres!(self, |pg| postgres::webhooks::mark_retry(
            pg,
            id,
            next_attempt_at,
            attempts,
            status,
            error
        )
        .await);
        sqlx::query!(
            "UPDATE webhook_outbox SET next_attempt_at = ?, attempts = ?, last_status = ?, \
             last_error = ? WHERE id = ? AND status = 'pending'",
            next_attempt_at,
            attempts,
            status.map(i64::from),
            error,
            id
        )
        .execute(&db.write)
        .await
        .map_err(StoreError::classify)?;
        Ok(())
    }

    /// The attempt failed and the retry horizon has passed: give up on this delivery.
    pub async fn mark_failed(
        &self,
        id: &str,
        attempts: i64,
        status: Option<u16>,
        error: Option<&str>,
    ) -> Result<()> {
        let db = on_postgres!(self, |pg| postgres::webhooks::mark_failed(
            pg, id, attempts, status, error
        )
        .await);
        sqlx::query!(
            "UPDATE webhook_outbox SET status = 'failed', attempts = ?, last_status = ?, \
             last_error = ? WHERE id = ? AND status = 'pending'",
            attempts,
            status.map(i64::from),
            error,
            id
        )
        .execute(&db.write)
        .await
        .map_err(StoreError::classify)?;
        Ok(())
    }

    /// The endpoint answered 410 Gone: remember it and mark its pending deliveries `disabled`.
    /// Returns how many pending deliveries were dropped.
    pub async fn disable_endpoint(&self, url: &str, now: i64) -> Result<u64> {
        let db = on_postgres!(self, |pg| postgres::webhooks::disable_endpoint(
            pg, url, now
        )
        .await);
        let mut tx = db.write.begin().await.map_err(StoreError::classify)?;
        sqlx::query!(
            "INSERT OR IGNORE INTO webhook_disabled (url, disabled_at) VALUES (?, ?)",
            url,
            now
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        let dropped = sqlx::query!(
            "UPDATE webhook_outbox SET status = 'disabled' WHERE url = ? AND status = 'pending'",
            url
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        tx.commit().await.map_err(StoreError::classify)?;
        Ok(dropped.rows_affected())
    }

    pub async fn is_disabled(&self, url: &str) -> Result<bool> {
        let db = on_postgres!(self, |pg| postgres::webhooks::is_disabled(pg, url).await);
        sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM webhook_disabled WHERE url = ?) AS "disabled!: bool""#,
            url
        )
        .fetch_one(&db.read)
        .await
        .map_err(StoreError::classify)
    }

    /// Deletes up to `limit` outbox rows that are done with (delivered, failed or disabled) and
    /// were written before `before`; returns how many. Pending rows are never deleted.
    pub async fn prune_webhooks(&self, before: i64, limit: u32) -> Result<u64> {
        let db = on_postgres!(self, |pg| postgres::webhooks::prune_webhooks(
            pg, before, limit
        )
        .await);
        let done = sqlx::query!(
            "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox \
             WHERE status <> 'pending' AND created_at < ? ORDER BY created_at LIMIT ?)",
            before,
            i64::from(limit)
        )
        .execute(&db.write)
        .await
        .map_err(StoreError::classify)?;
        Ok(done.rows_affected())
    }

    pub async fn webhook_state(&self, id: &str) -> Result<Option<OutboxState>> {
        let db = on_postgres!(self, |pg| postgres::webhooks::webhook_state(pg, id).await);
        sqlx::query_as!(
            OutboxState,
            "SELECT status, attempts, next_attempt_at, last_status, last_error, delivered_at \
             FROM webhook_outbox WHERE id = ?",
            id
        )
        .fetch_optional(&db.read)
        .await
        .map_err(StoreError::classify)
    }
}
