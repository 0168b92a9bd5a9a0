//! The per-session, per-recipient event log, and the group-commit appender that writes it.

use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::{Result, Store, StoreError};

/// One durable event for one recipient. `body` is the exact JSON text the recipient is sent.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub session_id: String,
    pub role: &'static str,
    pub seq: i64,
    pub kind: &'static str,
    pub body: String,
    pub created_at: i64,
}

struct Batch {
    rows: Vec<EventRow>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Writes event rows with group commit: whatever batches are waiting when the writer is free go
/// into one transaction, so a burst of events from many sessions costs one fsync. Each caller
/// still waits for its own rows to be durable before it sends them on.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Batch>,
}

/// Batches taken into one transaction at the most.
const MAX_GROUP: usize = 512;

impl Appender {
    pub(super) fn start(pool: SqlitePool) -> Self {
        let (tx, mut rx) = mpsc::channel::<Batch>(4096);
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(64);
            while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
                let outcome = write_group(&pool, &group).await.map_err(|e| e.to_string());
                for batch in group.drain(..) {
                    let _ = batch.done.send(outcome.clone());
                }
            }
        });
        Self { tx }
    }

    /// Queues rows without waiting for their commit (they are committed in queue order, so no
    /// later than any row appended after them). Used for the seq marks of live-only `signal`s.
    pub fn append_detached(&self, rows: Vec<EventRow>) {
        let (done, _) = oneshot::channel();
        if self.tx.try_send(Batch { rows, done }).is_err() {
            tracing::warn!("event writer backlogged: a signal's seq mark was not recorded");
        }
    }

    /// Returns once everything queued before it has been written (or has failed): what
    /// [`Self::append_detached`] queued is on disk before the database is closed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        let flushed = Batch {
            rows: Vec::new(),
            done,
        };
        if self.tx.send(flushed).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Appends rows and returns once they are committed.
    pub async fn append(&self, rows: Vec<EventRow>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Batch { rows, done })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) if msg.contains("locked") || msg.contains("busy") => {
                Err(StoreError::Busy(msg))
            }
            Ok(Err(msg)) => Err(StoreError::Db(sqlx::Error::Protocol(msg))),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

async fn write_group(pool: &SqlitePool, group: &[Batch]) -> Result<()> {
    let mut tx = pool.begin().await.map_err(StoreError::classify)?;
    for batch in group {
        insert_events(&mut tx, &batch.rows).await?;
    }
    tx.commit().await.map_err(StoreError::classify)
}

/// Inserts event rows inside a caller's transaction.
pub(crate) async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[EventRow],
) -> Result<()> {
    for row in rows {
        sqlx::query(
            "INSERT INTO events (session_id, role, seq, kind, body, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&row.session_id)
        .bind(row.role)
        .bind(row.seq)
        .bind(row.kind)
        .bind(&row.body)
        .bind(row.created_at)
        .execute(&mut **tx)
        .await
        .map_err(StoreError::classify)?;
    }
    Ok(())
}

impl Store {
    /// The highest seq issued to each role of a session (0 where none).
    pub async fn last_seqs(&self, session_id: &str) -> Result<(i64, i64)> {
        let rows =
            sqlx::query("SELECT role, MAX(seq) FROM events WHERE session_id = ? GROUP BY role")
                .bind(session_id)
                .fetch_all(&self.read)
                .await
                .map_err(StoreError::classify)?;
        let (mut agent, mut customer) = (0, 0);
        for r in rows {
            let role: String = r.try_get(0)?;
            let seq: i64 = r.try_get(1)?;
            match role.as_str() {
                "agent" => agent = seq,
                _ => customer = seq,
            }
        }
        Ok((agent, customer))
    }

    /// The bodies of a recipient's events with `after < seq <= upto`, in seq order; signals' seq
    /// marks are not events to replay.
    pub async fn events_between(
        &self,
        session_id: &str,
        role: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT seq, body FROM events WHERE session_id = ? AND role = ? AND seq > ? AND seq <= ? \
             AND kind <> 'signal' ORDER BY seq",
        )
        .bind(session_id)
        .bind(role)
        .bind(after)
        .bind(upto)
        .fetch_all(&self.read)
        .await
        .map_err(StoreError::classify)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}
