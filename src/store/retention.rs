//! Retention: deleting what a session gathered some days after it ended.
//!
//! The session row stays, with `purged_at` set, as a tombstone: its status, claim reference and
//! times remain readable, and its captures answer [`StoreError::Purged`] (410 `session_purged`).
//! The capture rows go with their files: once a row is gone, the start-up sweep of orphaned files
//! removes any file a crash left behind between the commit and the deletion.

pub use capturelink_store_types::PurgedContent;

use super::{Result, Store, StoreError};
use super::{on_postgres, postgres};

impl Store {
    /// Sessions that ended (closed, or expired) at or before `cutoff` and still hold their data,
    /// oldest first.
    pub async fn due_purges(&self, cutoff: i64, limit: u32) -> Result<Vec<String>> {
        let db = on_postgres!(self, |pg| postgres::retention::due_purges(
            pg, cutoff, limit
        )
        .await);
        // The expression matches the partial index `sessions_retention`.
        let limit = i64::from(limit);
        sqlx::query_scalar!(
            "SELECT id FROM sessions \
             WHERE purged_at IS NULL AND COALESCE(closed_at, expires_at) <= ? \
             ORDER BY COALESCE(closed_at, expires_at) LIMIT ?",
            cutoff,
            limit
        )
        .fetch_all(&db.read)
        .await
        .map_err(StoreError::classify)
    }

    /// Deletes a session's captures, capture requests, events and webhook rows and marks it
    /// purged, in one transaction. Returns the content its captures named, whose files the caller
    /// removes once no other capture names them; None if the session was purged already (or is
    /// still open).
    pub async fn purge_session(&self, id: &str, now: i64) -> Result<Option<PurgedContent>> {
        let db = on_postgres!(self, |pg| postgres::retention::purge_session(pg, id, now)
            .await);
        let mut tx = db.write.begin().await.map_err(StoreError::classify)?;
        let marked = sqlx::query!(
            "UPDATE sessions SET purged_at = ?1 WHERE id = ?2 AND purged_at IS NULL \
             AND (status IN ('closed', 'expired') OR expires_at <= ?1)",
            now,
            id
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        if marked.rows_affected() != 1 {
            return Ok(None);
        }
        let content: PurgedContent = sqlx::query!(
            "SELECT DISTINCT sha256, mime FROM captures WHERE session_id = ?",
            id
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::classify)?
        .into_iter()
        .map(|r| (r.sha256, r.mime))
        .collect();
        sqlx::query!("DELETE FROM captures WHERE session_id = ?", id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
        sqlx::query!("DELETE FROM capture_requests WHERE session_id = ?", id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
        sqlx::query!(
            "UPDATE checklist_slots SET capture_id = NULL WHERE session_id = ?",
            id
        )
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        sqlx::query!("DELETE FROM events WHERE session_id = ?", id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
        sqlx::query!("DELETE FROM webhook_outbox WHERE session_id = ?", id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::classify)?;
        tx.commit().await.map_err(StoreError::classify)?;
        Ok(Some(content))
    }

    /// When the session's data was purged; None if it was not (or there is no such session).
    pub async fn purged_at(&self, session_id: &str) -> Result<Option<i64>> {
        let db = on_postgres!(self, |pg| postgres::retention::purged_at(pg, session_id)
            .await);
        let at = sqlx::query_scalar!("SELECT purged_at FROM sessions WHERE id = ?", session_id)
            .fetch_optional(&db.read)
            .await
            .map_err(StoreError::classify)?;
        Ok(at.flatten())
    }
}
