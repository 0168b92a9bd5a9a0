//! Captures, capture requests and checklist changes.

pub use capturelink_store_types::captures::{CaptureRow, NewCapture, RequestRow};

use std::collections::HashSet;

use super::events::insert_events;
use super::webhooks::enqueue_webhook;
use super::{EventRow, Result, SlotRow, Store, StoreError};
use super::{on_postgres, postgres};

impl Store {
    pub async fn get_capture(&self, id: &str) -> Result<Option<CaptureRow>> {
        let db = on_postgres!(self, |pg| postgres::captures::get_capture(pg, id).await);
        sqlx::query_as!(
            CaptureRow,
            "SELECT id, session_id, slot_id, area, angle, note, source, request_id, mime, width,
                height, bytes, sha256, sharpness, brightness, warnings, uploaded_by,
                idempotency_key, request_hash, created_at
               FROM captures WHERE id = ?",
            id
        )
        .fetch_optional(&db.read)
        .await
        .map_err(StoreError::classify)
    }

    pub async fn capture_by_idempotency_key(
        &self,
        session_id: &str,
        key: &str,
    ) -> Result<Option<CaptureRow>> {
        let db = on_postgres!(self, |pg| postgres::captures::capture_by_idempotency_key(
            pg, session_id, key
        )
        .await);
        sqlx::query_as!(
            CaptureRow,
            "SELECT id, session_id, slot_id, area, angle, note, source, request_id, mime, width,
                height, bytes, sha256, sharpness, brightness, warnings, uploaded_by,
                idempotency_key, request_hash, created_at
               FROM captures WHERE session_id = ? AND idempotency_key = ?",
            session_id,
            key
        )
        .fetch_optional(&db.write)
        .await
        .map_err(StoreError::classify)
    }

    /// A session's captures, oldest first; [`StoreError::Purged`] once retention deleted them.
    pub async fn list_captures(&self, session_id: &str) -> Result<Vec<CaptureRow>> {
        let db = on_postgres!(self, |pg| postgres::captures::list_captures(pg, session_id)
            .await);
        let rows = sqlx::query_as!(
            CaptureRow,
            "SELECT id, session_id, slot_id, area, angle, note, source, request_id, mime, width,
                height, bytes, sha256, sharpness, brightness, warnings, uploaded_by,
                idempotency_key, request_hash, created_at
               FROM captures WHERE session_id = ? ORDER BY created_at, id",
            session_id
        )
        .fetch_all(&db.read)
        .await
        .map_err(StoreError::classify)?;
        // A purge deletes every capture row of its session, so only an empty list may be a purge.
        if rows.is_empty() && self.purged_at(session_id).await?.is_some() {
            return Err(StoreError::Purged);
        }
        Ok(rows)
    }

    pub async fn capture_count(&self, session_id: &str) -> Result<u64> {
        let db = on_postgres!(self, |pg| postgres::captures::capture_count(pg, session_id)
            .await);
        let n: i64 = sqlx::query_scalar!(
            "SELECT COUNT(*) FROM captures WHERE session_id = ?",
            session_id
        )
        .fetch_one(&db.read)
        .await
        .map_err(StoreError::classify)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Every content hash some capture names (for the start-up sweep of orphaned files).
    pub async fn capture_hashes(&self) -> Result<HashSet<String>> {
        let db = on_postgres!(self, |pg| postgres::captures::capture_hashes(pg).await);
        let hashes = sqlx::query_scalar!("SELECT DISTINCT sha256 FROM captures")
            .fetch_all(&db.read)
            .await
            .map_err(StoreError::classify)?;
        Ok(hashes.into_iter().collect())
    }

    /// Is this content named by any capture other than `except_id`?
    pub async fn hash_in_use(&self, sha256: &str) -> Result<bool> {
        let db = on_postgres!(self, |pg| postgres::captures::hash_in_use(pg, sha256).await);
        let n: i64 = sqlx::query_scalar!("SELECT COUNT(*) FROM captures WHERE sha256 = ?", sha256)
            .fetch_one(&db.write)
            .await
            .map_err(StoreError::classify)?;
        Ok(n > 0)
    }

    /// Records an agent's `capture.request`; a repeated request id keeps the first.
    pub async fn record_capture_request(
        &self,
        session_id: &str,
        r: &RequestRow,
        now: i64,
    ) -> Result<()> {
        let db = on_postgres!(self, |pg| postgres::captures::record_capture_request(
            pg, session_id, r, now
        )
        .await);
        sqlx::query!(
            "INSERT OR IGNORE INTO capture_requests \
             (session_id, request_id, area, angle, slot_id, status, created_at) \
             VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            session_id,
            &r.request_id,
            &r.area,
            &r.angle,
            &r.slot_id,
            now
        )
        .execute(&db.write)
        .await
        .map_err(StoreError::classify)?;
        Ok(())
    }

    pub async fn capture_request(
        &self,
        session_id: &str,
        request_id: &str,
    ) -> Result<Option<RequestRow>> {
        let db = on_postgres!(self, |pg| postgres::captures::capture_request(
            pg, session_id, request_id
        )
        .await);
        sqlx::query_as!(
            RequestRow,
            "SELECT request_id, area, angle, slot_id, status, capture_id FROM capture_requests \
             WHERE session_id = ? AND request_id = ?",
            session_id,
            request_id
        )
        .fetch_optional(&db.write)
        .await
        .map_err(StoreError::classify)
    }

    /// Inserts a capture, fills its slot, fulfils its request and logs its events, atomically.
    pub async fn insert_capture(&self, new: NewCapture<'_>) -> Result<()> {
        let numbered = self.numbers_events();
        let db = on_postgres!(self, |pg| postgres::captures::insert_capture(
            pg, new, numbered
        )
        .await);
        let c = new.capture;
        let mut tx = db.write.begin().await.map_err(StoreError::classify)?;
        sqlx::query!(
            "INSERT INTO captures (id, session_id, slot_id, area, angle, note, source, request_id, mime, width,
                 height, bytes, sha256, sharpness, brightness, warnings, uploaded_by,
                 idempotency_key, request_hash, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            sqlx::query!(
                "UPDATE checklist_slots SET status = 'done', capture_id = ? \
                 WHERE session_id = ? AND id = ?",
                &c.id,
                &c.session_id,
                slot
            )
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
        }
        if let Some(req) = new.fulfils {
            // Conditional: two stills racing for one request both passed the handler's check;
            // only the first to commit may fulfil it (the transaction then rolls back).
            let updated = sqlx::query!(
                "UPDATE capture_requests SET status = 'fulfilled', capture_id = ? \
                 WHERE session_id = ? AND request_id = ? AND status <> 'fulfilled'",
                &c.id,
                &c.session_id,
                req
            )
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::RequestFulfilled);
            }
        }
        insert_events(&mut tx, new.events).await?;
        for row in new.outbox {
            enqueue_webhook(&mut tx, row).await?;
        }
        tx.commit().await.map_err(StoreError::classify)
    }

    /// Appends a slot to a session's checklist with its events, in one transaction. Slots are
    /// only added under the session's room lock, so the position is not contended.
    pub async fn insert_slot_with_events(
        &self,
        session_id: &str,
        slot: &SlotRow,
        events: &mut [EventRow],
    ) -> Result<()> {
        let numbered = self.numbers_events();
        let db = on_postgres!(self, |pg| postgres::captures::insert_slot_with_events(
            pg, session_id, slot, events, numbered
        )
        .await);
        let mut tx = db.write.begin().await.map_err(StoreError::classify)?;
        super::sessions::insert_slot(&mut tx, session_id, slot).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(StoreError::classify)
    }
}
