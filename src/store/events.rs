//! The per-session, per-recipient event log, and the group-commit appender that writes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

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

/// The latest seq that live-only `signal`s took for one recipient, to be recorded (not their
/// bodies: only the number, so that after a restart the numbering continues past it).
///
/// One mark per recipient is queued at a time, and it is written with the value it holds when the
/// writer gets to it: a burst of signals costs one row per commit, not one per signal (at tens of
/// thousands of signals a second, a row each outran the writer and marks were dropped).
#[derive(Debug)]
pub struct SeqMark {
    session_id: String,
    role: &'static str,
    seq: AtomicI64,
    queued: AtomicBool,
}

impl SeqMark {
    pub fn new(session_id: String, role: &'static str) -> Arc<Self> {
        Arc::new(Self {
            session_id,
            role,
            seq: AtomicI64::new(0),
            queued: AtomicBool::new(false),
        })
    }
}

enum Job {
    Rows(Vec<EventRow>),
    Mark(Arc<SeqMark>),
}

struct Batch {
    job: Job,
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
        let job = Job::Rows(rows);
        if self.tx.try_send(Batch { job, done }).is_err() {
            tracing::warn!("event writer backlogged: a signal's seq mark was not recorded");
        }
    }

    /// Records that a live-only `signal` took `seq` (without waiting for the commit). It is
    /// committed no later than any row appended after this call, like [`Self::append_detached`],
    /// but marks of one recipient coalesce while one is queued.
    pub fn record_mark(&self, mark: &Arc<SeqMark>, seq: i64) {
        // The seq first, then the flag: a writer that has taken the flag down reads the seq after,
        // so it either sees this seq or leaves the flag down for this call to queue a new mark.
        mark.seq.fetch_max(seq, Ordering::SeqCst);
        if mark.queued.swap(true, Ordering::SeqCst) {
            return;
        }
        let (done, _) = oneshot::channel();
        let job = Job::Mark(Arc::clone(mark));
        if self.tx.try_send(Batch { job, done }).is_err() {
            mark.queued.store(false, Ordering::SeqCst);
            tracing::warn!("event writer backlogged: a signal's seq mark was not recorded");
        }
    }

    /// Returns once everything queued before it has been written (or has failed): what
    /// [`Self::append_detached`] queued is on disk before the database is closed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        let flushed = Batch {
            job: Job::Rows(Vec::new()),
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
            .send(Batch {
                job: Job::Rows(rows),
                done,
            })
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
        match &batch.job {
            Job::Rows(rows) => insert_events(&mut tx, rows).await?,
            Job::Mark(mark) => {
                mark.queued.store(false, Ordering::SeqCst);
                let seq = mark.seq.load(Ordering::SeqCst);
                // OR IGNORE: a number already on record (a mark that failed with its group and
                // was taken again) is no reason to fail the events committed with it.
                sqlx::query(
                    "INSERT OR IGNORE INTO events (session_id, role, seq, kind, body, created_at) \
                     VALUES (?, ?, ?, 'signal', '', ?)",
                )
                .bind(&mark.session_id)
                .bind(mark.role)
                .bind(seq)
                .bind(super::now_ms())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::classify)?;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with_session(dir: &std::path::Path, id: &str) -> Store {
        let store = Store::open(dir).await.unwrap();
        sqlx::query(
            "INSERT INTO sessions (id, claim_ref, status, token_salt, created_at, expires_at) \
             VALUES (?, 'CLM-1', 'active', 'salt', 0, 9000000000000)",
        )
        .bind(id)
        .execute(&store.write)
        .await
        .unwrap();
        store
    }

    /// A burst of signals, faster than the writer commits (the relay benchmark's 40,000/s), must
    /// still leave the latest seq on record, or a restart would issue it again.
    #[tokio::test]
    async fn a_burst_of_signals_keeps_the_latest_seq_on_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_session(dir.path(), "ses_burst").await;
        let mark = SeqMark::new("ses_burst".into(), "customer");
        for seq in 1..=20_000 {
            store.appender().record_mark(&mark, seq);
            if seq % 5_000 == 0 {
                // Let the writer take some marks mid-burst, as it does under load.
                tokio::task::yield_now().await;
            }
        }
        store.appender().flush().await;
        assert_eq!(store.last_seqs("ses_burst").await.unwrap(), (0, 20_000));
        // A later durable event numbers after it and is committed with it.
        store.appender().record_mark(&mark, 20_001);
        store
            .appender()
            .append(vec![EventRow {
                session_id: "ses_burst".into(),
                role: "customer",
                seq: 20_002,
                kind: "chat",
                body: "{}".into(),
                created_at: 0,
            }])
            .await
            .unwrap();
        let rows = store
            .events_between("ses_burst", "customer", 0, 30_000)
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![(20_002, "{}".to_owned())],
            "marks are not replayed"
        );
    }
}
